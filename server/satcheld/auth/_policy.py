"""The policy file: who is an admin, the user groups, and the rules granting
subjects verbs on resources in namespaces (docs/policy.md). Read and checked
here, every error naming the file and the line; indexed at load time so that
the authorizer's questions cost a few dictionary lookups. Only the authorizer
consults it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

import yaml

from ..model import SECRETS, SERVICE_ACCOUNTS, WORKLOADS, is_dns_label, is_dns_subdomain, shown
from ._identity import NODE, SERVICE_ACCOUNT, USER, Principal

# What a permission names: the verbs and resources of policy rules (DESIGN.md).
VERBS = ("get", "list", "watch", "create", "update", "delete", "rotate", "read-data")
RESOURCES = (SERVICE_ACCOUNTS, SECRETS, WORKLOADS)
ANY = "*"  # in a rule's namespaces, resources or verbs: all of them

# The groups every principal is put in by what it is (DESIGN.md, "Identity and authorization").
SYSTEM_AUTHENTICATED = "system:authenticated"  # every principal
SYSTEM_NODES = "system:nodes"  # every node
SYSTEM_SERVICEACCOUNTS = "system:serviceaccounts"  # every service account; + ":<ns>" those of one namespace
_SYSTEM = "system:"

_KEYS = ("admins", "groups", "rules")
_RULE_KEYS = ("subjects", "namespaces", "resources", "verbs")
_SUBJECT_FORMS = "user:<name>, sa:<namespace>/<name>, node:<name> or group:<name>"
_SYSTEM_GROUPS = (
    f"{SYSTEM_AUTHENTICATED}, {SYSTEM_NODES}, {SYSTEM_SERVICEACCOUNTS} or {SYSTEM_SERVICEACCOUNTS}:<namespace>"
)
_GROUP_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.:]*[A-Za-z0-9])?")
_USER_NAME = "a DNS-1123 subdomain: lowercase a-z, 0-9, '-' and '.'"
_NAMESPACE = "a DNS-1123 label: lowercase a-z, 0-9 and '-', at most 63"

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_NULL = "tag:yaml.org,2002:null"

_NOTHING: frozenset[str] = frozenset()


class PolicyError(Exception):
    """The policy file is missing, unreadable or malformed. The message is one
    line naming the file and, where the file says something wrong, the line
    (`line`, 1-based; None when the file cannot be read at all)."""

    def __init__(self, message: str, path: str = "", line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: `subjects` (subject strings, e.g. `group:ops`) may do `verbs`
    on `resources` in `namespaces` (None: every namespace). "*" already
    expanded: `resources` and `verbs` hold names from RESOURCES and VERBS."""

    subjects: frozenset[str]
    namespaces: frozenset[str] | None
    resources: frozenset[str]
    verbs: frozenset[str]
    line: int = 0  # where the rule starts in its file; 0 when not read from one


class Policy:
    """A checked policy and its index. `Policy()` allows nobody anything.

    Subject strings are the policy file's: `user:alice`, `sa:ns/name`,
    `node:n1`, `group:ops`, `group:system:authenticated`. Admins may do every
    verb on every resource in every namespace: `namespaces` and `allows` say so
    for `user:<admin>` as if a rule granted it."""

    __slots__ = ("_groups_of", "_index", "admins", "groups", "rules")

    def __init__(
        self,
        admins: Iterable[str] = (),
        groups: Mapping[str, Iterable[str]] | None = None,
        rules: Iterable[Rule] = (),
    ) -> None:
        self.admins: frozenset[str] = frozenset(admins)
        self.groups: Mapping[str, frozenset[str]] = MappingProxyType(
            {name: frozenset(users) for name, users in (groups or {}).items()}
        )
        self.rules: tuple[Rule, ...] = tuple(rules)

        member_of: dict[str, set[str]] = {}
        for name, users in self.groups.items():
            for user in users:
                member_of.setdefault(user, set()).add(name)
        self._groups_of = {user: frozenset(names) for user, names in member_of.items()}

        # (verb, resource) -> subject -> the namespaces it may do that in (None: all).
        grants: dict[tuple[str, str], dict[str, set[str] | None]] = {}
        everything = Rule(frozenset(f"{USER}:{a}" for a in self.admins), None, frozenset(RESOURCES), frozenset(VERBS))
        for rule in (everything, *self.rules):
            for verb in rule.verbs:
                for resource in rule.resources:
                    by_subject = grants.setdefault((verb, resource), {})
                    for subject in rule.subjects:
                        if rule.namespaces is None:
                            by_subject[subject] = None
                        elif (held := by_subject.setdefault(subject, set())) is not None:
                            held.update(rule.namespaces)
        self._index: dict[tuple[str, str], dict[str, frozenset[str] | None]] = {
            key: {s: None if ns is None else frozenset(ns) for s, ns in by_subject.items() if ns is None or ns}
            for key, by_subject in grants.items()
        }

    def __repr__(self) -> str:
        return f"Policy(admins={sorted(self.admins)}, groups={sorted(self.groups)}, rules={len(self.rules)})"

    # -- questions (the authorizer asks them on every request) ------------------------------

    def groups_of(self, user: str) -> frozenset[str]:
        """The names of the groups (from `groups:`) that list user `user`."""
        return self._groups_of.get(user, _NOTHING)

    def subjects_of(self, principal: Principal) -> frozenset[str]:
        """Every subject string that names `principal`: itself and its groups,
        the system groups included."""
        subjects = {str(principal), f"group:{SYSTEM_AUTHENTICATED}"}
        if principal.kind == USER:
            subjects.update(f"group:{g}" for g in self.groups_of(principal.name))
        elif principal.kind == NODE:
            subjects.add(f"group:{SYSTEM_NODES}")
        elif principal.kind == SERVICE_ACCOUNT:
            subjects.add(f"group:{SYSTEM_SERVICEACCOUNTS}")
            subjects.add(f"group:{SYSTEM_SERVICEACCOUNTS}:{principal.namespace}")
        return frozenset(subjects)

    def namespaces(self, subjects: Iterable[str], verb: str, resource: str) -> frozenset[str] | None:
        """The namespaces in which any of `subjects` may do `verb` on `resource`:
        None for all of them ("*"), an empty set for none. An unknown verb or
        resource is allowed nowhere."""
        by_subject = self._index.get((verb, resource))
        if not by_subject:
            return _NOTHING
        found = _NOTHING
        for subject in subjects:
            held = by_subject.get(subject, _NOTHING)
            if held is None:
                return None
            if held:
                found = held if not found else found | held
        return found

    def allows(self, subjects: Iterable[str], verb: str, resource: str, namespace: str) -> bool:
        """Whether any of `subjects` may do `verb` on `resource` in `namespace`.
        A namespace that is no name ("": across all of them) is allowed only by
        rules for every namespace ("*")."""
        by_subject = self._index.get((verb, resource))
        if not by_subject:
            return False
        for subject in subjects:
            held = by_subject.get(subject, _NOTHING)
            if held is None or namespace in held:
                return True
        return False

    # -- reading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Reads and checks the policy file at `path`; PolicyError says what is wrong."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise PolicyError(f"cannot read policy file {path}: {e.strerror}", str(path)) from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise PolicyError(f"policy file {path} line {line}: not UTF-8 text", str(path), line) from None
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: str | Path = "<string>") -> Policy:
        """Checks the policy in `text` (YAML), read from `path` (for messages)."""
        return _Reader(str(path)).policy(text)

    @staticmethod
    def default_text(admin: str = "admin") -> str:
        return (
            "# Satchel authorization policy (docs/policy.md). Deny by default.\n"
            f"admins: [{admin}]                  # users who may do everything\n"
            "groups: {}                       # user groups, used as group:<name>\n"
            "rules: []                        # subjects, namespaces, resources, verbs\n"
        )


class _Reader:
    """Walks the composed YAML nodes (which know their lines) of one file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, at: yaml.Node | int, message: str) -> PolicyError:
        line = at if isinstance(at, int) else at.start_mark.line + 1
        message = " ".join(message.split())  # one line, whatever YAML quoted
        return PolicyError(f"policy file {self.path} line {line}: {message}", self.path, line)

    def fail(self, at: yaml.Node | int, message: str) -> NoReturn:
        raise self.error(at, message)

    def policy(self, text: str) -> Policy:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            raise self._syntax(e, text) from None
        except yaml.reader.ReaderError as e:
            line = text[: e.position].count("\n") + 1
            raise self.error(line, f"not valid YAML: character #x{e.character:04x}: {e.reason}") from None
        except yaml.YAMLError as e:  # pragma: no cover - every error PyYAML raises on text is one of the above
            what = " ".join(str(e).split())
            raise PolicyError(f"policy file {self.path} is not valid YAML: {what}", self.path) from None
        except RecursionError:
            raise PolicyError(f"policy file {self.path} is nested too deeply", self.path) from None
        if root is None or _is_null(root):
            return Policy()
        if not isinstance(root, yaml.MappingNode) or root.tag != _MAP:
            self.fail(root, f"expected a mapping of {_one_of(_KEYS, 'and')} at the top level, not {_describe(root)}")
        sections = self.mapping(root, _KEYS, "at the top level")
        # Groups first: rules name them, wherever they stand in the file.
        groups = self.groups(sections["groups"]) if "groups" in sections else {}
        admins = self.names(sections["admins"], "'admins' must be a list of user names") if "admins" in sections else []
        rules = self.rules(sections["rules"], groups) if "rules" in sections else []
        return Policy(admins, groups, rules)

    def _syntax(self, e: yaml.MarkedYAMLError, text: str) -> PolicyError:
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "malformed"
        if e.problem and e.context and e.problem.startswith("but "):  # "expected a single document ... but found"
            what = f"{e.context} {e.problem}"
        elif e.problem and e.context:
            started = e.context_mark.line + 1 if e.context_mark else None
            later = mark is not None and started is not None and started != mark.line + 1
            what += f" ({e.context} that starts on line {started})" if later else f" ({e.context})"
        if e.context == "while scanning an alias":
            what = 'a bare * starts a YAML alias; write "*" in quotes'
        if mark is None:  # pragma: no cover - PyYAML marks every syntax error
            return PolicyError(f"policy file {self.path} is not valid YAML: {what}", self.path)
        last = max(1, len(text.splitlines()))  # the end of the stream is on the last line, not after it
        return self.error(min(mark.line + 1, last), f"not valid YAML: {what}")

    # -- shapes -----------------------------------------------------------------------------

    def mapping(self, node: yaml.MappingNode, keys: tuple[str, ...], where: str) -> dict[str, yaml.Node]:
        """The values of `node` by key; every key one of `keys`, none twice."""
        values: dict[str, yaml.Node] = {}
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) and key.tag == _STR else None
            if name not in keys:
                shown_key = shown(name) if name is not None else _describe(key)
                self.fail(key, f"unknown key {shown_key} {where} (expected {_one_of(keys, 'or')})")
            assert name is not None
            if name in values:
                self.fail(key, f"duplicate key {shown(name)} {where} (first on line {lines[name]})")
            values[name], lines[name] = value, key.start_mark.line + 1
        return values

    def sequence(self, node: yaml.Node, says: str, empty_ok: bool) -> list[yaml.Node]:
        """The items of a list; null is an empty list where that is allowed."""
        if empty_ok and _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode) or node.tag != _SEQ:
            self.fail(node, f"{says}, not {_describe(node)}")
        if not node.value and not empty_ok:
            self.fail(node, f"{says}; this one is empty, which would match nothing")
        return list(node.value)

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            hint = " (quote it)" if isinstance(node, yaml.ScalarNode) and node.value and not _is_null(node) else ""
            self.fail(node, f"expected {what}, not {_describe(node)}{hint}")
        return str(node.value)

    def names(self, node: yaml.Node, says: str) -> list[str]:
        """A list of user names (admins, a group's members)."""
        users = []
        for item in self.sequence(node, says, empty_ok=True):
            user = self.string(item, "a user name")
            if not is_dns_subdomain(user):
                self.fail(item, f"{shown(user)} is not a user name ({_USER_NAME})")
            users.append(user)
        return users

    def groups(self, node: yaml.Node) -> dict[str, list[str]]:
        says = "'groups' must be a mapping of group names to lists of user names"
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
            self.fail(node, f"{says}, not {_describe(node)}")
        groups: dict[str, list[str]] = {}
        for key, value in node.value:
            name = self.string(key, "a group name")
            if name.startswith(_SYSTEM):
                self.fail(
                    key, f'group {shown(name)}: names starting with "{_SYSTEM}" are reserved for the system groups'
                )
            if len(name) > 253 or not _GROUP_NAME.fullmatch(name):
                self.fail(key, f"{shown(name)} is not a group name (letters, digits and '-_.:', at most 253)")
            if name in groups:
                self.fail(key, f"group {shown(name)} is defined twice")
            groups[name] = self.names(value, f"group {shown(name)} must be a list of user names")
        return groups

    def rules(self, node: yaml.Node, groups: Mapping[str, object]) -> list[Rule]:
        rules = []
        for item in self.sequence(node, "'rules' must be a list of rules", empty_ok=True):
            if not isinstance(item, yaml.MappingNode) or item.tag != _MAP:
                self.fail(item, f"a rule must be a mapping of {_one_of(_RULE_KEYS, 'and')}, not {_describe(item)}")
            fields = self.mapping(item, _RULE_KEYS, "in a rule")
            for key in _RULE_KEYS:
                if key not in fields:
                    self.fail(item, f"the rule is missing {key!r} (a rule has {_one_of(_RULE_KEYS, 'and')})")
            subjects = [self.subject(n, groups) for n in self.field(fields, "subjects")]
            namespaces = [self.namespace(n) for n in self.field(fields, "namespaces")]
            resources = [self.word(n, "resource", RESOURCES) for n in self.field(fields, "resources")]
            verbs = [self.word(n, "verb", VERBS) for n in self.field(fields, "verbs")]
            rules.append(
                Rule(
                    subjects=frozenset(subjects),
                    namespaces=None if ANY in namespaces else frozenset(namespaces),
                    resources=frozenset(RESOURCES if ANY in resources else resources),
                    verbs=frozenset(VERBS if ANY in verbs else verbs),
                    line=item.start_mark.line + 1,
                )
            )
        return rules

    def field(self, fields: Mapping[str, yaml.Node], key: str) -> list[yaml.Node]:
        """The items of one of a rule's lists, which may not be empty."""
        return self.sequence(fields[key], f"{key!r} must be a list of {key}", empty_ok=False)

    # -- items ------------------------------------------------------------------------------

    def word(self, node: yaml.Node, what: str, known: tuple[str, ...]) -> str:
        value = self.string(node, f"a {what}")
        if value != ANY and value not in known:
            self.fail(node, f'unknown {what} {shown(value)} (expected one of {", ".join(known)}, or "*" for all)')
        return value

    def namespace(self, node: yaml.Node) -> str:
        value = self.string(node, 'a namespace or "*"')
        if value != ANY and not is_dns_label(value):
            self.fail(node, f'{shown(value)} is not a namespace ({_NAMESPACE}) nor "*"')
        return value

    def subject(self, node: yaml.Node, groups: Mapping[str, object]) -> str:
        subject = self.string(node, "a subject")
        kind, colon, name = subject.partition(":")
        if subject == ANY:
            self.fail(node, f'"*" is not a subject; group:{SYSTEM_AUTHENTICATED} names every caller')
        if not colon:
            self.fail(node, f"subject {shown(subject)} has no kind (expected {_SUBJECT_FORMS})")
        if kind in (USER, NODE):
            if not is_dns_subdomain(name):
                self.fail(node, f"subject {shown(subject)}: {shown(name)} is not a {kind} name ({_USER_NAME})")
        elif kind == SERVICE_ACCOUNT:
            namespace, slash, account = name.partition("/")
            if not slash:
                self.fail(node, f"subject {shown(subject)} is not sa:<namespace>/<name>")
            if not is_dns_label(namespace):
                self.fail(node, f"subject {shown(subject)}: {shown(namespace)} is not a namespace ({_NAMESPACE})")
            if not is_dns_subdomain(account):
                self.fail(node, f"subject {shown(subject)}: {shown(account)} is not a service account name")
        elif kind == "group":
            if name.startswith(_SYSTEM):
                if not _is_system_group(name):
                    self.fail(node, f"unknown system group {shown(name)} (expected {_SYSTEM_GROUPS})")
            elif name not in groups:
                defined = f"defined: {', '.join(sorted(groups))}" if groups else "none is defined"
                self.fail(node, f"subject {shown(subject)} names no group under 'groups' ({defined})")
        else:
            self.fail(node, f"unknown subject kind {shown(kind)} in {shown(subject)} (expected {_SUBJECT_FORMS})")
        return subject


def _is_system_group(name: str) -> bool:
    if name in (SYSTEM_AUTHENTICATED, SYSTEM_NODES, SYSTEM_SERVICEACCOUNTS):
        return True
    prefix = f"{SYSTEM_SERVICEACCOUNTS}:"
    return name.startswith(prefix) and is_dns_label(name[len(prefix) :])


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _one_of(words: tuple[str, ...], conjunction: str) -> str:
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _describe(node: yaml.Node) -> str:
    """What a node is, for messages: `a list`, `the number 7`, `the string "x"`."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kinds = {
        _NULL: "nothing (null)",
        "tag:yaml.org,2002:bool": "the boolean",
        "tag:yaml.org,2002:int": "the number",
        "tag:yaml.org,2002:float": "the number",
        _STR: "the string",
    }
    kind = kinds.get(node.tag, f"a {node.tag} value")
    return kind if node.tag == _NULL else f"{kind} {shown(str(node.value))}"
