"""`python -m satchel._agent`: the same as the `satchel-agent` command (handy under a profiler)."""

import sys

from satchel._agent._cli import main

if __name__ == "__main__":
    sys.exit(main())
