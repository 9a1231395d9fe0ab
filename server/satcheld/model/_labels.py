"""Label selectors in Kubernetes' equality syntax: `k=v,k2!=v2,k3,!k4`, and the
limits on their size, checked before a selector is parsed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ResourceExhausted
from ._validation import Violations, check_labels, shown

# An invalid selector names at most this many of its faults: each fault is
# written twice (the message and the BadRequest), and grpc clients refuse
# trailers beyond 8 KiB.
MAX_SELECTOR_FAULTS = 5


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
                violations.add(field, f"requirement {shown(raw)} has no key")
                continue
            check_labels(violations, field, {req.key: req.value})
            requirements.append(req)
        if len(violations) > MAX_SELECTOR_FAULTS:
            more = len(violations) - MAX_SELECTOR_FAULTS
            del violations[MAX_SELECTOR_FAULTS:]
            violations.add(field, f"and {more} more faults")
        violations.raise_if_any()
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True)
class SelectorLimits:
    """The longest label selector and the most requirements one may have
    (`satcheld serve --max-selector-length`, `--max-selector-terms`). Checked
    before the selector is parsed, so an oversized one costs a count, not a
    parse; the refusal never repeats the selector."""

    max_length: int = 4096
    max_terms: int = 32

    def check(self, text: str, field: str = "label_selector") -> None:
        if len(text) > self.max_length:
            raise ResourceExhausted(
                f"{field} is {len(text)} characters long; at most {self.max_length} are accepted",
                reason="LABEL_SELECTOR_TOO_LONG",
                metadata={"max_length": str(self.max_length), "length": str(len(text))},
            )
        terms = text.count(",") + 1 if text.strip() else 0
        if terms > self.max_terms:
            raise ResourceExhausted(
                f"{field} has {terms} requirements; at most {self.max_terms} are accepted",
                reason="LABEL_SELECTOR_TOO_MANY_TERMS",
                metadata={"max_terms": str(self.max_terms), "terms": str(terms)},
            )
