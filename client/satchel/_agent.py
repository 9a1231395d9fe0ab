"""`satchel-agent`: the node agent (DESIGN.md, "Node agent"). Not built yet.

The console script exists so that installs and packaging stay stable; until the
agent lands it says so and exits with status 2 instead of failing to import.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("satchel-agent: the node agent is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
