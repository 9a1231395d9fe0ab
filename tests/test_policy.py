"""The policy file (docs/policy.md): the whole shape is read and checked, every
error naming the file and the line; the index answers which namespaces a set
of subjects may act in; satcheld refuses to start on a bad file, naming the
line; SIGHUP re-reads it, and a broken file keeps the old policy."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import grpc
import pytest
from conftest import Stubs
from failures import failure
from kinds import SECRETS
from test_serve import _channel, _explicit, _fails, _stderr_says, satcheld

import satchel.pki
from satcheld.auth import RESOURCES, VERBS, Policy, PolicyError, Principal, _authorizer, _policy

Code = grpc.StatusCode

FULL = """\
# every part of the shape
admins: [admin, root]
groups:
  ops: [alice, bob]
  auditors: [carol]
  empty: []
rules:
  - subjects: ["group:ops", "sa:ci/deployer"]
    namespaces: ["prod"]
    resources: [secrets]
    verbs: [get, list, watch]
  - subjects: ["user:dave", "node:n1", "group:system:nodes"]
    namespaces: ["*"]
    resources: ["*"]
    verbs: ["*"]
"""


def _load(tmp_path: Path, text: str | bytes) -> Policy:
    path = tmp_path / "policy.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return Policy.load(path)


# -- reading ---------------------------------------------------------------------------------


def test_a_full_file_is_read_whole(tmp_path) -> None:
    policy = _load(tmp_path, FULL)

    assert policy.admins == {"admin", "root"}
    assert policy.groups == {"ops": {"alice", "bob"}, "auditors": {"carol"}, "empty": frozenset()}
    assert policy.groups_of("alice") == {"ops"} and policy.groups_of("carol") == {"auditors"}
    assert policy.groups_of("nobody") == frozenset()
    first, second = policy.rules
    assert first.subjects == {"group:ops", "sa:ci/deployer"}
    assert first.namespaces == {"prod"}
    assert first.resources == {"secrets"}
    assert first.verbs == {"get", "list", "watch"}
    assert first.line == 8
    assert second.subjects == {"user:dave", "node:n1", "group:system:nodes"}
    assert second.namespaces is None, '"*" is every namespace'
    assert second.resources == set(RESOURCES) and second.verbs == set(VERBS), '"*" is every resource and verb'
    assert "read-data" in second.verbs
    assert second.line == 12


def test_the_default_policy_names_its_admin_and_nothing_else() -> None:
    policy = Policy.parse(Policy.default_text("ada"))
    assert policy.admins == {"ada"} and not policy.groups and not policy.rules


@pytest.mark.parametrize(
    "text", ["", "# nothing\n", "admins:\ngroups:\nrules:\n", "admins: []\ngroups: {}\nrules: []\n"]
)
def test_an_empty_policy_allows_nobody_anything(tmp_path, text: str) -> None:
    policy = _load(tmp_path, text)
    assert not policy.admins and not policy.groups and not policy.rules
    assert policy.namespaces({"user:admin", "group:system:authenticated"}, "get", "secrets") == frozenset()


def test_verbs_and_resources_are_defined_once_by_the_policy() -> None:
    assert _authorizer.VERBS is _policy.VERBS and _authorizer.RESOURCES is _policy.RESOURCES
    assert VERBS == ("get", "list", "watch", "create", "update", "delete", "rotate", "read-data")
    assert RESOURCES == ("serviceaccounts", "secrets", "workloads")


def _rule(**change: str) -> str:
    """A one-rule policy (the rule on line 4, its verbs on line 7) with `change`d fields."""
    fields = {"subjects": '["group:ops"]', "namespaces": "[prod]", "resources": "[secrets]", "verbs": "[get]"}
    fields.update(change)
    body = "".join(f"    {key}: {value}\n" for key, value in fields.items() if value is not None)
    return "admins: [admin]\ngroups: {ops: [alice]}\nrules:\n  - " + body[4:]


# (id, text, the line named, what the message says)
ERRORS = [
    ("unknown-verb", _rule(verbs="[get, reed]"), 7, 'unknown verb "reed" (expected one of get, list, watch,'),
    (
        "unknown-verb-in-a-block-list",
        _rule(verbs="\n      - get\n      - list\n      - reed"),
        10,
        'unknown verb "reed"',
    ),
    ("unknown-resource", _rule(resources="[secret]"), 6, 'unknown resource "secret" (expected one of serviceaccounts,'),
    ("bad-subject-kind", _rule(subjects='["group:ops", "robot:x"]'), 4, 'unknown subject kind "robot" in "robot:x"'),
    (
        "subject-kind-on-its-own-line",
        _rule(subjects='\n      - "group:ops"\n      - "robot:x"'),
        6,
        'unknown subject kind "robot"',
    ),
    ("subject-without-a-kind", _rule(subjects="[alice]"), 4, 'subject "alice" has no kind'),
    ("sa-without-a-slash", _rule(subjects='["sa:ci"]'), 4, 'subject "sa:ci" is not sa:<namespace>/<name>'),
    ("user-name-not-a-name", _rule(subjects='["user:Alice"]'), 4, '"Alice" is not a user name'),
    ("undefined-group", _rule(subjects='["group:opps"]'), 4, "subject \"group:opps\" names no group under 'groups'"),
    ("unknown-system-group", _rule(subjects='["group:system:admins"]'), 4, 'unknown system group "system:admins"'),
    ("star-subject", _rule(subjects='["*"]'), 4, '"*" is not a subject'),
    ("bad-namespace", _rule(namespaces="[Prod]"), 5, '"Prod" is not a namespace'),
    ("system-group-defined", "admins: []\ngroups:\n  ops: [alice]\n  system:x: [bob]\n", 4, 'group "system:x"'),
    ("bad-group-member", "groups:\n  ops:\n    - alice\n    - user:bob\n", 4, '"user:bob" is not a user name'),
    ("bad-admin", "admins:\n  - admin\n  - Root\n", 3, '"Root" is not a user name'),
    ("unknown-top-level-key", "admins: [admin]\n\nrulez: []\n", 3, 'unknown key "rulez" at the top level'),
    ("unknown-rule-key", _rule(verb="[get]"), 8, 'unknown key "verb" in a rule'),
    ("duplicate-key", "admins: [a]\nrules: []\nadmins: [b]\n", 3, 'duplicate key "admins" at the top level'),
    ("missing-rule-key", _rule(verbs=None), 4, "the rule is missing 'verbs'"),
    ("admins-not-a-list", "groups: {}\nadmins: admin\n", 2, "'admins' must be a list of user names, not the string"),
    ("verbs-not-a-list", _rule(verbs="get"), 7, "'verbs' must be a list of verbs, not the string \"get\""),
    ("rules-not-a-list", "rules:\n  subjects: []\n", 2, "'rules' must be a list of rules, not a mapping"),
    ("rule-not-a-mapping", "rules:\n  - get\n", 2, "a rule must be a mapping"),
    ("groups-not-a-mapping", "admins: []\ngroups: [ops]\n", 2, "'groups' must be a mapping"),
    ("a-number-for-a-name", "admins: [admin, 7]\n", 1, 'expected a user name, not the number "7"'),
    ("a-boolean-for-a-name", "admins:\n  - yes\n", 2, 'expected a user name, not the boolean "yes" (quote it)'),
    ("not-a-mapping", "- admin\n", 1, "expected a mapping of admins, groups and rules at the top level, not a list"),
    ("empty-subjects", _rule(subjects="[]"), 4, "'subjects' must be a list of subjects; this one is empty"),
    ("empty-namespaces", _rule(namespaces="[]"), 5, "'namespaces' must be a list of namespaces; this one is empty"),
    ("empty-resources", _rule(resources="[]"), 6, "'resources' must be a list of resources; this one is empty"),
    ("empty-verbs", _rule(verbs="[]"), 7, "'verbs' must be a list of verbs; this one is empty"),
    ("null-verbs", _rule(verbs=""), 7, "'verbs' must be a list of verbs, not nothing (null)"),
    ("yaml-syntax", "admins: [admin]\nrules:\n  - subjects: [a\n    verbs: [get]\n", 4, "not valid YAML: expected ','"),
    ("yaml-unclosed-at-the-end", "admins: [admin]\nrules: [\n", 2, "not valid YAML: expected the node content"),
    ("yaml-bad-indent", "admins: [admin]\ngroups:\n  ops: [a]\n bad: [b]\n", 4, "not valid YAML"),
    ("yaml-two-documents", "admins: [a]\n---\nadmins: [b]\n", 2, "not valid YAML: expected a single document"),
    ("yaml-bare-star", _rule(namespaces="[*]"), 5, 'a bare * starts a YAML alias; write "*" in quotes'),
    ("yaml-control-character", "admins: [admin]\nrules: []\n# \x01\n", 3, "not valid YAML: character #x0001"),
]


@pytest.mark.parametrize(("text", "line", "says"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_every_error_names_the_file_and_the_line(tmp_path, text: str, line: int, says: str) -> None:
    with pytest.raises(PolicyError) as raised:
        _load(tmp_path, text)
    message = str(raised.value)
    assert message.startswith(f"policy file {tmp_path / 'policy.yaml'} line {line}: "), message
    assert says in message, message
    assert "\n" not in message, "the server prints config errors on one line"
    assert raised.value.line == line


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path) -> None:
    with pytest.raises(PolicyError, match=r"line 2: not UTF-8 text") as raised:
        _load(tmp_path, b"admins: [admin]\n# caf\xe9\n")
    assert str(tmp_path / "policy.yaml") in str(raised.value)


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read policy file .*no-such\.yaml: No such file"):
        Policy.load(tmp_path / "no-such.yaml")


def test_the_user_groups_in_rules_may_be_defined_after_them(tmp_path) -> None:
    rule = '{subjects: ["group:ops"], namespaces: [a], resources: [secrets], verbs: [get]}'
    policy = _load(tmp_path, f"rules:\n  - {rule}\ngroups: {{ops: [alice]}}\n")
    assert policy.allows(policy.subjects_of(Principal("user", "alice")), "get", "secrets", "a")


# -- evaluating ------------------------------------------------------------------------------

EVALUATED = """\
admins: [root]
groups:
  ops: [alice, bob]
  auditors: [carol]
rules:
  - subjects: ["group:ops"]
    namespaces: [prod, staging]
    resources: [secrets]
    verbs: [get, list]
  - subjects: ["user:dave", "group:ops"]
    namespaces: [dev]
    resources: [secrets]
    verbs: [get]
  - subjects: ["group:auditors"]
    namespaces: ["*"]
    resources: [secrets, serviceaccounts]
    verbs: [list]
  - subjects: ["sa:ci/deployer"]
    namespaces: ["*"]
    resources: [workloads]
    verbs: [create, update]
  - subjects: ["node:n1"]
    namespaces: [edge]
    resources: [serviceaccounts]
    verbs: [get]
  - subjects: ["group:system:nodes"]
    namespaces: [edge, core]
    resources: [workloads]
    verbs: [list]
  - subjects: ["group:system:authenticated"]
    namespaces: [public]
    resources: [secrets]
    verbs: [get]
  - subjects: ["group:system:serviceaccounts"]
    namespaces: [shared]
    resources: [serviceaccounts]
    verbs: [get]
  - subjects: ["group:system:serviceaccounts:ci"]
    namespaces: [ci]
    resources: ["*"]
    verbs: ["*"]
"""

ALL = None
ALICE, CAROL, DAVE, ERIN, ROOT = (Principal("user", n) for n in ("alice", "carol", "dave", "erin", "root"))
N1, N2 = Principal("node", "n1"), Principal("node", "n2")
DEPLOYER, CI_OTHER, WEB = (
    Principal("sa", "deployer", "ci"),
    Principal("sa", "other", "ci"),
    Principal("sa", "web", "app"),
)

# (who, verb, resource, the namespaces it may do that in)
NAMESPACES = [
    (ALICE, "get", "secrets", {"prod", "staging", "dev", "public"}),  # two rules for ops, everyone's rule
    (ALICE, "list", "secrets", {"prod", "staging"}),
    (ALICE, "read-data", "secrets", set()),  # get is not read-data
    (ALICE, "delete", "secrets", set()),
    (DAVE, "get", "secrets", {"dev", "public"}),
    (DAVE, "list", "secrets", set()),
    (CAROL, "list", "secrets", ALL),
    (CAROL, "list", "serviceaccounts", ALL),
    (CAROL, "get", "secrets", {"public"}),
    (ERIN, "get", "secrets", {"public"}),  # in no group: only what everyone may
    (ERIN, "get", "workloads", set()),
    (ROOT, "delete", "workloads", ALL),  # an admin
    (ROOT, "read-data", "secrets", ALL),
    (DEPLOYER, "create", "workloads", ALL),
    (DEPLOYER, "delete", "workloads", {"ci"}),  # system:serviceaccounts:ci may do everything in ci
    (DEPLOYER, "get", "serviceaccounts", {"shared", "ci"}),
    (DEPLOYER, "read-data", "secrets", {"ci"}),
    (CI_OTHER, "create", "workloads", {"ci"}),
    (WEB, "get", "serviceaccounts", {"shared"}),
    (WEB, "delete", "workloads", set()),
    (WEB, "get", "secrets", {"public"}),
    (N1, "get", "serviceaccounts", {"edge"}),
    (N1, "list", "workloads", {"edge", "core"}),
    (N2, "get", "serviceaccounts", set()),
    (N2, "list", "workloads", {"edge", "core"}),
    (N2, "get", "secrets", {"public"}),
    (ALICE, "fly", "secrets", set()),  # not a verb
    (ALICE, "get", "planets", set()),  # not a resource
]


@pytest.mark.parametrize(
    ("who", "verb", "resource", "expected"), NAMESPACES, ids=[f"{w}-{v}-{r}" for w, v, r, _ in NAMESPACES]
)
def test_namespaces_and_allows(who: Principal, verb: str, resource: str, expected: set[str] | None) -> None:
    policy = Policy.parse(EVALUATED)
    subjects = policy.subjects_of(who)
    found = policy.namespaces(subjects, verb, resource)
    assert found == (None if expected is None else frozenset(expected))
    for namespace in ("prod", "staging", "dev", "public", "edge", "core", "ci", "shared", "other"):
        assert policy.allows(subjects, verb, resource, namespace) == (expected is None or namespace in expected)
    assert policy.allows(subjects, verb, resource, "") == (expected is None), '"" (every namespace) needs "*"'


def test_subjects_of_names_each_principal_and_its_groups() -> None:
    policy = Policy.parse(EVALUATED)
    assert policy.subjects_of(ALICE) == {"user:alice", "group:ops", "group:system:authenticated"}
    assert policy.subjects_of(ERIN) == {"user:erin", "group:system:authenticated"}
    assert policy.subjects_of(N1) == {"node:n1", "group:system:nodes", "group:system:authenticated"}
    assert policy.subjects_of(DEPLOYER) == {
        "sa:ci/deployer",
        "group:system:serviceaccounts",
        "group:system:serviceaccounts:ci",
        "group:system:authenticated",
    }


def test_a_user_named_like_a_node_is_not_the_node() -> None:
    policy = Policy.parse(EVALUATED)
    assert policy.namespaces({"user:n1"}, "get", "serviceaccounts") == frozenset()
    assert policy.namespaces({"node:root"}, "get", "secrets") == frozenset()
    assert policy.namespaces({"group:root"}, "get", "secrets") == frozenset()


def test_namespaces_takes_subject_strings_directly() -> None:
    policy = Policy.parse(EVALUATED)
    assert policy.namespaces(["group:ops"], "list", "secrets") == {"prod", "staging"}
    assert policy.namespaces(iter(["group:ops", "group:auditors"]), "list", "secrets") is None
    assert policy.namespaces((), "get", "secrets") == frozenset()


# -- satcheld --------------------------------------------------------------------------------


async def test_satcheld_refuses_to_start_on_a_bad_policy_naming_the_line(pki, tmp_path) -> None:
    policy = tmp_path / "bad-policy.yaml"
    policy.write_text(_rule(verbs="[get, reed]"))
    code, err, out = await _fails(tmp_path, _explicit(pki, tmp_path, policy=str(policy)))

    assert code == 2
    assert len(err) == 1, err
    assert f"policy file {policy} line 7: unknown verb " in err[0], err
    assert "listening on" not in out


def _make_alice_an_admin(path: Path) -> None:
    path.write_text("admins: [admin, alice]\n")


def _break(path: Path) -> None:
    path.write_text("admins: [admin]\nrules:\n  - subjects: [a\n    verbs: [get]\n")  # "[a" is not closed before line 4


async def _may_create(stubs: Stubs, name: str) -> None:
    await SECRETS.api(stubs).create(SECRETS.make(name))


async def test_reload_puts_a_new_policy_in_force_and_a_broken_one_keeps_the_old(server, connect, pki, caplog) -> None:
    alice, admin = connect(pki.alice), connect(pki.admin)
    denied = await failure(SECRETS.api(alice).create(SECRETS.make("before")), Code.PERMISSION_DENIED)
    assert denied.message.startswith("user:alice may not")

    _make_alice_an_admin(server.config.policy)
    with caplog.at_level(logging.INFO, logger="satcheld"):
        server.reload()
    assert f"SIGHUP: reloaded the policy file {server.config.policy}" in caplog.messages
    await _may_create(alice, "by-alice")

    _break(server.config.policy)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="satcheld"):
        server.reload()
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage().startswith(f"SIGHUP: kept the old policy: policy file {server.config.policy} line 4: ")
    assert "not valid YAML" in error.getMessage() and "\n" not in error.getMessage()
    assert not any("reloaded the policy" in m for m in caplog.messages)
    await _may_create(alice, "still-by-alice")  # the policy before the broken file
    await _may_create(admin, "by-admin")


async def test_sighup_reloads_the_policy_of_a_running_satcheld(tmp_path) -> None:
    data = tmp_path / "data"
    async with satcheld(tmp_path, "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0") as srv:
        crt, key = satchel.pki.issue(data / "certs", "user", "alice")
        as_alice = {**srv.exports, "SATCHEL_CERT": str(crt), "SATCHEL_KEY": str(key)}
        async with _channel(as_alice) as channel:
            alice = Stubs.over(channel)
            await failure(SECRETS.api(alice).create(SECRETS.make("before")), Code.PERMISSION_DENIED)

            _make_alice_an_admin(data / "policy.yaml")
            srv.proc.send_signal(signal.SIGHUP)
            await _stderr_says(tmp_path, f"SIGHUP: reloaded the policy file {data / 'policy.yaml'}")
            await _may_create(alice, "by-alice")

            _break(data / "policy.yaml")
            srv.proc.send_signal(signal.SIGHUP)
            await _stderr_says(tmp_path, f"SIGHUP: kept the old policy: policy file {data / 'policy.yaml'} line 4: ")
            await _may_create(alice, "still-by-alice")
