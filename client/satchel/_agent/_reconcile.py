"""Make the disk match the desired tree: scan, diff, apply (kubelet's volume manager).

The same pass runs at start, after a relisting, for each event and now and then for drift:
recovery is not a separate path. What the root holds that the tree does not (workloads gone,
secrets unbound or deleted, planted files and symlinks) is removed; leaves whose files differ
are rewritten; leaves already right are left alone, so a restart rewrites nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from satchel._agent._files import Root
from satchel._agent._layout import SECRETS_DIR, Leaf, Path, Tree


@dataclass
class Outcome:
    """What one pass changed, and what it could not do."""

    written: list[Leaf] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # leaves, and directories of whole workloads
    strays: list[Path] = field(default_factory=list)  # entries the layout has no place for
    errors: list[str] = field(default_factory=list)


class Reconciler:
    """Applies trees to one root. Not thread-safe: one pass at a time."""

    def __init__(self, root: Root) -> None:
        self.root = root
        # What we wrote (or found right) last, per leaf: its version directory and the payload's
        # source. A leaf whose `..data` still points there, for the same source, holds that
        # payload; any other is read and compared.
        self._written: dict[Path, tuple[str, tuple[object, ...]]] = {}

    def reconcile(self, tree: Tree) -> Outcome:
        out = Outcome()
        try:
            disk = self.root.scan()
        except OSError as e:
            out.errors.append(f"cannot scan the root: {e.strerror or e}")
            return out
        for path in disk.strays:
            self._remove(path, out.strays, out)
        namespaces = {ns for ns, _ in tree.workloads}
        for ns in sorted(disk.namespaces - namespaces):
            gone: list[Path] = []
            self._remove((ns,), gone, out)
            if gone:  # told as the workloads it held
                out.removed += sorted(w for w in disk.workloads if w[0] == ns) or gone
        for ns, name in sorted(disk.workloads - tree.workloads):
            if ns in namespaces:
                self._remove((ns, name), out.removed, out)
        for path in sorted(disk.leaves):
            if (path[0], path[1]) in tree.workloads and path not in tree.leaves and path not in tree.pending:
                self._remove(path, out.removed, out)
        for ns, name in sorted(tree.workloads):
            self._try(out, (ns, name, SECRETS_DIR), self.root.ensure_dir)
        for path, leaf in tree.leaves.items():
            found = disk.leaves.get(path)
            if found is not None and found.intact and found.version_dir and self._holds(path, found.version_dir, leaf):
                if found.leftovers:
                    self._try(out, path, functools.partial(self.root.remove_leftovers, names=found.leftovers))
                continue
            try:
                self._written[path] = (self.root.write_leaf(path, leaf.payload), leaf.source)
            except OSError as e:
                self._written.pop(path, None)
                out.errors.append(f"cannot write {'/'.join(path)}: {e.strerror or e}")
            else:
                out.written.append(leaf)
        return out

    def _holds(self, path: Path, version_dir: str, leaf: Leaf) -> bool:
        if self._written.get(path) == (version_dir, leaf.source):
            return True
        if self.root.read_leaf(path) == dict(leaf.payload):
            self._written[path] = (version_dir, leaf.source)
            return True
        return False

    def _remove(self, path: Path, into: list[Path], out: Outcome) -> None:
        for written in [p for p in self._written if p[: len(path)] == path]:
            del self._written[written]
        try:
            if self.root.remove(path):
                into.append(path)
        except OSError as e:
            out.errors.append(f"cannot remove {'/'.join(path)}: {e.strerror or e}")

    def _try(self, out: Outcome, path: Path, action: Callable[[Path], None]) -> None:
        try:
            action(path)
        except OSError as e:
            out.errors.append(f"cannot tidy {'/'.join(path)}: {e.strerror or e}")
