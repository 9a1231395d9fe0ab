"""Label selectors in Kubernetes' equality syntax: `k=v,k2!=v2,k3,!k4`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._validation import Violations, check_labels


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "=":
            return labels.get(self.key) == self.value
        if self.op == "!=":
            return labels.get(self.key) != self.value
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str, field: str = "label_selector") -> LabelSelector:
        violations = Violations()
        requirements = []
        for raw in (part.strip() for part in text.split(",")) if text.strip() else ():
            if "!=" in raw:
                key, _, value = raw.partition("!=")
                req = Requirement(key.strip(), "!=", value.strip())
            elif "=" in raw:
                key, _, value = raw.partition("==" if "==" in raw else "=")
                req = Requirement(key.strip(), "=", value.strip())
            elif raw.startswith("!"):
                req = Requirement(raw[1:].strip(), "!exists")
            else:
                req = Requirement(raw, "exists")
            if not req.key:
                violations.add(field, f"requirement {raw!r} has no key")
                continue
            check_labels(violations, field, {req.key: req.value})
            requirements.append(req)
        violations.raise_if_any()
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)
