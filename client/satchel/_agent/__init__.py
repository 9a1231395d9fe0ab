"""`satchel-agent`, the node agent (DESIGN.md, "Node agent"; docs/agent.md).

Rooms, arrows only downward (import-linter checks them): `_cli` (flags, startup) > `_daemon`
(streams in, passes out) > `_credentials`, `_hooks`, `_metrics`, `_state` > `_reconcile` (scan,
diff, apply) > `_files` (the AtomicWriter; nothing followed out of the root) > `_layout` (the
desired tree, and the names allowed in it).
"""

from satchel._agent._cli import main

__all__ = ["main"]
