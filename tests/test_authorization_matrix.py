"""The authorization matrix: every kind of principal (an admin; users granted by a
rule, through a group, or nothing; a node with workloads and one without; service
accounts reading themselves, granted by a `sa:` rule or by their namespace's system
group) against every CRUD and Watch RPC of the three kinds, in a granted namespace
(prod), an ungranted one (dev) and one that every caller may read a little of (pub),
on existing and missing objects, bound and unbound ones, with valid and invalid
requests; and AuthorizationService.CheckAccess, which must agree with each outcome.

The expected status of every call comes from the small model below (`Model`): the
policy written as Python data (turned into the policy file the server reads) and the
rules of DESIGN.md ("Identity and authorization"), evaluated over the objects an admin
lists. It never asks the server what is allowed.

Besides the status: a denied call says nothing of existence (its message is the same
for every object of one namespace but for the name asked for, and says no "not found"
or "exists") and changes nothing stored (the revision stays where it was, and the
whole store compares equal after each principal's run); an allowed List or Watch shows
exactly the objects the model says, with secret data exactly where the model says.

One server serves the whole module; each principal is one test, which runs its whole
row of the table and reports every case that went wrong, not only the first.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from conftest import Identity, Pki, Stubs, mint
from cryptography import x509
from failures import parse
from google.protobuf.message import Message
from kinds import ALL, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind
from watchkit import WAIT, Channels, running, type_name

from satchel.v1 import authorization_pb2, authorization_pb2_grpc, secret_pb2, service_account_pb2
from satcheld._server import Server

Code = grpc.StatusCode
OK, DENIED, MISSING = Code.OK, Code.PERMISSION_DENIED, Code.NOT_FOUND

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALL_NS = None  # in a rule: "*"
TRUST_DOMAIN = "satchel.local"
BAD_NAME = "Bad_Name"  # not a DNS-1123 name: invalid wherever a name is checked

# -- the policy, as data ------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    subjects: tuple[str, ...]
    namespaces: tuple[str, ...] | None  # None: "*"
    resources: tuple[str, ...]
    verbs: tuple[str, ...]


ADMINS = ("admin",)
GROUPS = {"readers": ("gina",), "empty": ()}
RULES = (
    # A user granted by name: everything but rotate on every kind in prod, data included;
    # reading, creating and updating secrets in dev too, never seeing their data.
    Rule(
        ("user:ursula",),
        ("prod",),
        ("serviceaccounts", "secrets", "workloads"),
        ("get", "list", "watch", "create", "update", "delete", "read-data"),
    ),
    Rule(("user:ursula",), ("dev",), ("secrets",), ("get", "list", "watch", "create", "update")),
    # A user in a group: reading secrets and workloads in prod, no data.
    Rule(("group:readers",), ("prod",), ("secrets", "workloads"), ("get", "list", "watch")),
    # A service account by name: workloads in prod, everything but delete.
    Rule(("sa:prod/deployer",), ("prod",), ("workloads",), ("get", "list", "watch", "create", "update")),
    # Every service account of prod (its system group): get and list secrets of prod.
    Rule(("group:system:serviceaccounts:prod",), ("prod",), ("secrets",), ("get", "list")),
    # Every service account: list the accounts of dev.
    Rule(("group:system:serviceaccounts",), ("dev",), ("serviceaccounts",), ("list",)),
    # A node by name: get (and watch, which a node's own view overrides) accounts in dev.
    Rule(("node:n1",), ("dev",), ("serviceaccounts",), ("get", "watch")),
    # Everyone: get and list the workloads of pub.
    Rule(("group:system:authenticated",), ("pub",), ("workloads",), ("get", "list")),
    # An empty group grants nobody anything.
    Rule(("group:empty",), ALL_NS, ("secrets",), ("get", "list", "watch", "read-data")),
)


def policy_text() -> str:
    """The policy file for ADMINS, GROUPS and RULES (JSON flow lists are YAML)."""
    lines = [f"admins: {json.dumps(list(ADMINS))}", "groups:"]
    lines += [f"  {name}: {json.dumps(list(users))}" for name, users in GROUPS.items()]
    lines.append("rules:")
    for rule in RULES:
        lines += [
            f"  - subjects: {json.dumps(list(rule.subjects))}",
            f"    namespaces: {json.dumps(['*'] if rule.namespaces is None else list(rule.namespaces))}",
            f"    resources: {json.dumps(list(rule.resources))}",
            f"    verbs: {json.dumps(list(rule.verbs))}",
        ]
    return "\n".join(lines) + "\n"


# -- principals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    label: str
    kind: str  # user, node, sa
    name: str
    namespace: str = ""

    @property
    def subject(self) -> str:
        return f"sa:{self.namespace}/{self.name}" if self.kind == "sa" else f"{self.kind}:{self.name}"

    @property
    def spiffe_id(self) -> str:
        if self.kind == "sa":
            return f"spiffe://{TRUST_DOMAIN}/ns/{self.namespace}/sa/{self.name}"
        return f"spiffe://{TRUST_DOMAIN}/{self.kind}/{self.name}"


PRINCIPALS = (
    Who("admin", "user", "admin"),
    Who("user-by-rule", "user", "ursula"),
    Who("user-in-group", "user", "gina"),
    Who("user-with-nothing", "user", "nobody"),
    Who("node-bound", "node", "n1"),
    Who("node-unbound", "node", "n9"),
    Who("sa-self-only", "sa", "web", "dev"),
    Who("sa-missing-self", "sa", "gone", "dev"),
    Who("sa-by-rule", "sa", "deployer", "prod"),
    Who("sa-by-ns-group", "sa", "plain", "prod"),
)

NAMESPACES = ("prod", "dev", "pub")  # prod granted, dev not, pub read by everyone (workloads)
LIST_NAMESPACES = (*NAMESPACES, "")  # "" lists across all of them

# -- the stored world -----------------------------------------------------------------------

Key = tuple[str, str]  # namespace, name


def refs(*names: str) -> list[service_account_pb2.SecretReference]:
    return [service_account_pb2.SecretReference(name=n) for n in names]


# What populate stores, the token secrets aside. Each account `a` of namespace `ns`
# (those created here, and the `default` ones its workloads make) has its token secret
# `ns/a-token`, made with it and listed in its `secrets`.
ACCOUNTS: set[Key] = {
    ("prod", "app"),
    ("prod", "deployer"),
    ("prod", "plain"),
    ("prod", "default"),
    ("dev", "web"),
    ("dev", "other"),
    ("pub", "default"),
}
PLAIN_SECRETS: set[Key] = {("prod", "db"), ("prod", "app-conf"), ("prod", "loose"), ("dev", "cfg"), ("dev", "hidden")}
LISTED = {("prod", "app"): {"app-conf"}}  # the secrets an account lists besides its token secret
WORKLOAD_KEYS: set[Key] = {("prod", "w1"), ("prod", "w2"), ("dev", "w3"), ("dev", "w4"), ("pub", "board")}
TOKEN_DATA_KEYS = ["ca.crt", "namespace", "token"]


def token_secret(account: Key) -> Key:
    return account[0], f"{account[1]}-token"


TOKEN_SECRETS = {token_secret(a): a for a in ACCOUNTS}


async def populate(admin: Stubs) -> None:
    """prod: accounts app (lists secret app-conf), deployer, plain (and default, made
    by w2); secrets db, app-conf, loose; workloads w1 (n1: app, db, the missing
    ghost) and w2 (n2: default, loose). dev: accounts web, other; secrets cfg (bound
    to n1 by w3), hidden (bound to n2 by w4); workloads w3 (n1: web, cfg) and w4 (n2:
    other, hidden). pub: workload board (n2), and its default account. Every account
    has its token secret (so n1 binds prod/app-token and dev/web-token)."""
    accounts, secrets, workloads = (k.api(admin) for k in ALL)
    for ns, name in sorted(PLAIN_SECRETS):
        value = f"value-of-{ns}-{name}".encode()
        await secrets.create(SECRETS.make(name, ns, data={"password": value, "extra": value * 2}))
    await accounts.create(SERVICE_ACCOUNTS.make("app", "prod", secrets=refs("app-conf")))
    for ns, name in (("prod", "deployer"), ("prod", "plain"), ("dev", "web"), ("dev", "other")):
        await accounts.create(SERVICE_ACCOUNTS.make(name, ns))
    for ns, name, node, account, mounts in (
        ("prod", "w1", "n1", "app", ["db", "ghost"]),
        ("prod", "w2", "n2", "default", ["loose"]),
        ("dev", "w3", "n1", "web", ["cfg"]),
        ("dev", "w4", "n2", "other", ["hidden"]),
        ("pub", "board", "n2", "default", []),
    ):
        await workloads.create(WORKLOADS.make(name, ns, node_name=node, service_account=account, secrets=mounts))


def assert_populated(state: dict[str, dict[Key, Message]]) -> None:
    """What the admin lists is what populate wrote, and one token secret per account:
    the model's world holds exactly the objects the table is written for."""
    assert set(state[SERVICE_ACCOUNTS.name]) == ACCOUNTS
    assert set(state[SECRETS.name]) == PLAIN_SECRETS | set(TOKEN_SECRETS)
    assert set(state[WORKLOADS.name]) == WORKLOAD_KEYS
    for key, account in state[SERVICE_ACCOUNTS.name].items():
        listed = sorted(r.name for r in account.secrets)
        assert listed == sorted({token_secret(key)[1], *LISTED.get(key, ())}), f"{key} lists {listed}"
    for key, secret in state[SECRETS.name].items():
        if key in TOKEN_SECRETS:
            assert secret.type == secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, f"{key}: type {secret.type}"
            assert (key[0], secret.service_account) == TOKEN_SECRETS[key], f"{key}: for {secret.service_account}"
            assert sorted(k.name for k in secret.data_keys) == TOKEN_DATA_KEYS, f"{key}: {secret.data_keys}"
        else:
            assert secret.type != secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, f"{key} is a token secret"
        assert sorted(secret.data) == sorted(k.name for k in secret.data_keys), f"{key}: the admin sees no data"


async def stored(admin: Stubs) -> dict[str, dict[Key, Message]]:
    """Every stored object, by kind and key, as an admin lists it."""
    state = {}
    for kind in ALL:
        response = await kind.api(admin).list(page_size=1000)
        assert not response.next_page_token
        state[kind.name] = {(o.metadata.namespace, o.metadata.name): o for o in getattr(response, kind.items)}
    return state


def fingerprint(state: dict[str, dict[Key, Message]]) -> dict[str, dict[Key, tuple[str, int]]]:
    return {
        kind: {key: (o.metadata.uid, o.metadata.resource_version) for key, o in objs.items()}
        for kind, objs in state.items()
    }


async def revision(admin: Stubs) -> int:
    return (await WORKLOADS.api(admin).list(page_size=1)).revision


# -- the model ------------------------------------------------------------------------------


@dataclass
class Model:
    """Who may do what, from RULES and the stored world; knows nothing of the server."""

    world: dict[str, dict[Key, Message]]

    def subjects(self, who: Who) -> set[str]:
        subjects = {who.subject, "group:system:authenticated"}
        if who.kind == "user":
            subjects |= {f"group:{g}" for g, users in GROUPS.items() if who.name in users}
        elif who.kind == "node":
            subjects.add("group:system:nodes")
        else:
            subjects |= {"group:system:serviceaccounts", f"group:system:serviceaccounts:{who.namespace}"}
        return subjects

    def ruled(self, who: Who, verb: str, kind: str) -> set[str] | None:
        """The namespaces where rules grant `who` `verb` on `kind`; None: all."""
        found: set[str] = set()
        for rule in RULES:
            if self.subjects(who) & set(rule.subjects) and kind in rule.resources and verb in rule.verbs:
                if rule.namespaces is None:
                    return None
                found |= set(rule.namespaces)
        return found

    def rule_allows(self, who: Who, verb: str, kind: str, ns: str) -> bool:
        namespaces = self.ruled(who, verb, kind)
        return namespaces is None or ns in namespaces

    def bound(self, node: str, kind: str) -> set[Key]:
        """What the node's workloads bind of `kind`, whether it exists or not."""
        keys: set[Key] = set()
        for (ns, name), w in self.world[WORKLOADS.name].items():
            if w.node_name != node:
                continue
            if kind == WORKLOADS.name:
                keys.add((ns, name))
            elif kind == SERVICE_ACCOUNTS.name:
                keys.add((ns, w.service_account))
            else:
                keys |= {(ns, s) for s in w.secrets}
                account = self.world[SERVICE_ACCOUNTS.name].get((ns, w.service_account))
                if account is not None:
                    keys |= {(ns, r.name) for r in account.secrets}
        return keys

    def may(self, who: Who, verb: str, kind: str, ns: str, name: str) -> bool:
        """One object: get, create, update, delete (and read-data)."""
        if who.kind == "user" and who.name in ADMINS:
            return True
        if who.kind == "node" and verb in ("get", "read-data") and (ns, name) in self.bound(who.name, kind):
            if verb == "get" or kind == SECRETS.name:
                return True
        if who.kind == "sa" and (verb, kind, ns, name) == ("get", SERVICE_ACCOUNTS.name, who.namespace, who.name):
            return True
        return self.rule_allows(who, verb, kind, ns)

    def shows_data(self, who: Who, ns: str, name: str) -> bool:
        return self.may(who, "read-data", SECRETS.name, ns, name)

    def seen(self, who: Who, verb: str, kind: str, ns: str) -> set[Key] | None:
        """What a List or Watch of `ns` ("" for all) shows; None if it is denied."""
        objects = set(self.world[kind])
        if ns:
            objects = {k for k in objects if k[0] == ns}
        if who.kind == "user" and who.name in ADMINS:
            return objects
        node_verbs = {WORKLOADS.name: ("list", "watch")}.get(kind, ("watch",))
        if who.kind == "node" and verb in node_verbs:
            return objects & self.bound(who.name, kind)  # its own view, whatever the rules say
        namespaces = self.ruled(who, verb, kind)
        if namespaces is None:
            return objects
        if (ns and ns not in namespaces) or not namespaces:
            return None
        return {k for k in objects if k[0] in namespaces}


# -- the cases ------------------------------------------------------------------------------


@dataclass
class Case:
    what: str  # how a failure names the case
    call: Callable[[], Awaitable[Any]]
    expect: Code
    access: tuple[str, str, str, str]  # CheckAccess(verb, resource, namespace, name) says allowed iff not DENIED
    check: Callable[[Any], None] | None = None  # on the answer of a call that succeeded
    writes: bool = False  # whether a successful call changes what is stored
    denial_group: tuple[str, ...] = ()  # cases whose denial messages must be the same

    @property
    def allowed(self) -> bool:
        return self.expect != DENIED


def outcome(allowed: bool, invalid: bool = False, exists: bool = True, otherwise: Code = OK) -> Code:
    """PERMISSION_DENIED first, then INVALID_ARGUMENT, then NOT_FOUND."""
    if not allowed:
        return DENIED
    if invalid:
        return Code.INVALID_ARGUMENT
    return otherwise if exists else MISSING


def secret_check(who_sees: Callable[[str, str], bool]) -> Callable[[Message], None]:
    """For an object answered whole (Get, Create, Update): data exactly when seen."""

    def check(obj: Message) -> None:
        if not isinstance(obj, SECRETS.message):
            return
        meta = obj.metadata
        expected = who_sees(meta.namespace, meta.name)
        assert bool(obj.data) == expected, (
            f"{meta.namespace}/{meta.name}: data shown {bool(obj.data)}, expected {expected}"
        )
        assert obj.data_keys, f"{meta.namespace}/{meta.name}: no data_keys"
        if expected:
            assert sorted(obj.data) == [k.name for k in obj.data_keys]

    return check


def listing_check(kind: Kind, expected: set[Key], who: Who, model: Model) -> Callable[[list[Message]], None]:
    check_secret = secret_check(lambda ns, name: model.shows_data(who, ns, name))

    def check(objects: list[Message]) -> None:
        shown = [(o.metadata.namespace, o.metadata.name) for o in objects]
        assert len(shown) == len(set(shown)), f"an object shown twice: {sorted(shown)}"
        assert set(shown) == expected, f"shown {sorted(shown)}, expected {sorted(expected)}"
        for obj in objects:
            check_secret(obj)
            if kind is SECRETS:  # the shape is always there, as the admin sees it
                stored = model.world[SECRETS.name][(obj.metadata.namespace, obj.metadata.name)]
                assert list(obj.data_keys) == list(stored.data_keys)

    return check


async def list_objects(api: Any, kind: Kind, **request: Any) -> list[Message]:
    response = await api.list(page_size=1000, **request)
    assert not response.next_page_token
    return list(getattr(response, kind.items))


async def watch_initial(stubs: Stubs, kind: Kind, **request: Any) -> list[Message]:
    """The ADDED objects of a Watch up to its SYNCED; the stream is then cancelled."""
    rpc = getattr(kind.stub(stubs.channel), kind.rpc("watch"))
    call = rpc(kind.request_type("watch")(**request))
    objects = []
    try:
        while True:
            response = await asyncio.wait_for(call.read(), WAIT)
            assert response is not grpc.aio.EOF, "the stream ended before SYNCED"
            event = type_name(response.type)
            if event == "SYNCED":
                return objects
            assert event == "ADDED", f"{event} before SYNCED"
            objects.append(getattr(response, kind.field))
    finally:
        call.cancel()


def cases_for(who: Who, stubs: Stubs, model: Model) -> Iterator[Case]:
    """Every call of the matrix for `who`, with what the model expects of it."""
    for kind in ALL:
        api = kind.api(stubs)
        existing = model.world[kind.name]
        sees = secret_check(lambda ns, name: model.shows_data(who, ns, name))
        # Get: every object of the three namespaces; a missing one (bound to n1, for
        # the ghost secret, or not); a bad name.
        for ns in NAMESPACES:
            names = sorted({n for (o_ns, n) in existing if o_ns == ns} | {"nope"})
            if kind is SECRETS and ns == "prod":
                names.append("ghost")  # w1 mounts it; it does not exist
            for name in [*names, BAD_NAME]:
                allowed = model.may(who, "get", kind.name, ns, name)
                yield Case(
                    f"{kind.rpc('get')} {ns}/{name}",
                    lambda api=api, ns=ns, name=name: api.get(name, ns),
                    outcome(allowed, invalid=name == BAD_NAME, exists=(ns, name) in existing),
                    ("get", kind.name, ns, name),
                    check=sees,
                    denial_group=(kind.rpc("get"), ns),
                )
        # List and Watch of each namespace and of all; a bad selector, a bad revision.
        for verb in ("list", "watch"):
            for ns in LIST_NAMESPACES:
                seen = model.seen(who, verb, kind.name, ns)
                if verb == "list":
                    call = lambda api=api, kind=kind, ns=ns: list_objects(api, kind, namespace=ns)  # noqa: E731
                    bad = lambda api=api, ns=ns: api.list(namespace=ns, label_selector="=x")  # noqa: E731
                else:
                    call = lambda kind=kind, ns=ns: watch_initial(stubs, kind, namespace=ns, send_initial=True)  # noqa: E731
                    bad = lambda kind=kind, ns=ns: watch_initial(stubs, kind, namespace=ns, since_revision=-1)  # noqa: E731
                where = ns or "all namespaces"
                yield Case(
                    f"{kind.rpc(verb)} {where}",
                    call,
                    outcome(seen is not None),
                    (verb, kind.name, ns, ""),
                    check=None if seen is None else listing_check(kind, seen, who, model),
                    denial_group=(kind.rpc(verb), ns),
                )
                yield Case(
                    f"{kind.rpc(verb)} {where} (invalid request)",
                    bad,
                    outcome(seen is not None, invalid=True),
                    (verb, kind.name, ns, ""),
                    denial_group=(kind.rpc(verb), ns),
                )
        for ns in ("prod", "dev"):
            names = sorted({n for (o_ns, n) in existing if o_ns == ns})
            may_create = model.may(who, "create", kind.name, ns, "x")
            may_update = model.may(who, "update", kind.name, ns, "x")
            may_delete = model.may(who, "delete", kind.name, ns, "x")
            # Create: an existing name, a bad name (no write happens either way).
            for name in (names[0], BAD_NAME):
                obj = kind.make(name, ns)
                yield Case(
                    f"{kind.rpc('create')} {ns}/{name}",
                    lambda api=api, obj=obj: api.create(obj),
                    outcome(may_create, invalid=name == BAD_NAME, otherwise=Code.ALREADY_EXISTS),
                    ("create", kind.name, ns, name),
                    denial_group=(kind.rpc("create"), ns),
                )
            # Update and Delete of every existing object with a stale etag (so an allowed
            # call is ABORTED and nothing changes), a missing one, a bad mask or name.
            for name in [*names, "nope"]:
                obj = kind.make(name, ns, labels={"touched": "yes"})
                obj.metadata.etag = "stale"
                exists = (ns, name) in existing
                yield Case(
                    f"{kind.rpc('update')} {ns}/{name}",
                    lambda api=api, obj=obj: api.update(obj, ["metadata.labels"]),
                    outcome(may_update, exists=exists, otherwise=Code.ABORTED),
                    ("update", kind.name, ns, name),
                    denial_group=(kind.rpc("update"), ns),
                )
                yield Case(
                    f"{kind.rpc('delete')} {ns}/{name}",
                    lambda api=api, ns=ns, name=name: api.delete(name, ns, etag="stale"),
                    outcome(may_delete, exists=exists, otherwise=Code.ABORTED),
                    ("delete", kind.name, ns, name),
                    denial_group=(kind.rpc("delete"), ns),
                )
            obj = kind.make(names[0], ns)
            yield Case(
                f"{kind.rpc('update')} {ns}/{names[0]} (invalid mask)",
                lambda api=api, obj=obj: api.update(obj, ["no_such_field"]),
                outcome(may_update, invalid=True),
                ("update", kind.name, ns, names[0]),
                denial_group=(kind.rpc("update"), ns),
            )
            yield Case(
                f"{kind.rpc('delete')} {ns}/{BAD_NAME}",
                lambda api=api, ns=ns: api.delete(BAD_NAME, ns),
                outcome(may_delete, invalid=True),
                ("delete", kind.name, ns, BAD_NAME),
                denial_group=(kind.rpc("delete"), ns),
            )
            # A fresh object's whole life: created, updated, deleted by `who` where it may,
            # else by the admin (so that the next step has something to act on).
            fresh = fresh_object(kind, ns)
            yield Case(
                f"{kind.rpc('create')} {ns}/fresh",
                lambda api=api, fresh=fresh: api.create(fresh),
                outcome(may_create),
                ("create", kind.name, ns, "fresh"),
                check=sees,
                writes=True,
                denial_group=(kind.rpc("create"), ns),
            )
            relabelled = kind.make("fresh", ns, labels={"step": "updated"})
            yield Case(
                f"{kind.rpc('update')} {ns}/fresh",
                lambda api=api, obj=relabelled: api.update(obj, ["metadata.labels"]),
                outcome(may_update),
                ("update", kind.name, ns, "fresh"),
                check=sees,
                writes=True,
                denial_group=(kind.rpc("update"), ns),
            )
            yield Case(
                f"{kind.rpc('delete')} {ns}/fresh",
                lambda api=api, ns=ns: api.delete("fresh", ns),
                outcome(may_delete),
                ("delete", kind.name, ns, "fresh"),
                writes=True,
                denial_group=(kind.rpc("delete"), ns),
            )


def fresh_object(kind: Kind, ns: str) -> Message:
    """An object that binds nothing to n1 or n9, so no node's view moves."""
    if kind is WORKLOADS:
        return kind.make("fresh", ns, node_name="n2", service_account={"prod": "deployer", "dev": "other"}[ns])
    return kind.make("fresh", ns)


# -- running them ---------------------------------------------------------------------------


@dataclass
class World:
    server: Server
    admin: Stubs
    model: Model
    initial: dict[str, dict[Key, tuple[str, int]]]
    stubs: dict[str, Stubs] = field(default_factory=dict)


def identity_of(pki: Pki, who: Who) -> Identity:
    if who.label == "admin":
        return pki.admin
    if who.kind in ("user", "node"):
        return pki.identity(who.kind, who.name)
    return mint(pki.dir, f"sa-{who.namespace}-{who.name}", who.name, [x509.UniformResourceIdentifier(who.spiffe_id)])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Any:
    data: Path = tmp_path_factory.mktemp("matrix")
    policy = data / "matrix-policy.yaml"
    policy.write_text(policy_text())
    async with running(pki, data, policy=policy) as server:
        channels = Channels(pki)
        try:
            admin = channels.stubs(server.address, pki.admin)
            await populate(admin)
            state = await stored(admin)
            assert_populated(state)
            w = World(server, admin, Model(state), fingerprint(state))
            for who in PRINCIPALS:
                w.stubs[who.label] = channels.stubs(server.address, identity_of(pki, who))
            yield w
        finally:
            await channels.close()


async def run_case(case: Case, who: Who, world: World, check_access: Any, denials: dict) -> None:
    before = await revision(world.admin)
    try:
        answer = await case.call()
        code = OK
    except grpc.aio.AioRpcError as e:
        answer, code = e, e.code()
    details = f": {answer.details()}" if code != OK else ""
    assert code == case.expect, f"expected {case.expect.name}, got {code.name}{details}"
    if code == OK and case.check is not None:
        case.check(answer)
    if code == DENIED:
        f = parse(answer)
        assert f.info.reason == "PERMISSION_DENIED", f.info.reason
        lowered = f.message.lower()
        assert "not found" not in lowered and "exist" not in lowered, f"the denial reveals existence: {f.message}"
        assert f.message.startswith(f"{who.subject} may not"), f.message
        said = f.message.removeprefix(who.subject)
        name = case.access[3]  # the name asked for may be repeated, nothing else about the object
        said = re.sub(rf"(?<![-\w]){re.escape(name)}(?![-\w])", "<name>", said) if name else said
        denials.setdefault(case.denial_group, {})[case.what] = said
    if not (case.writes and code == OK):
        after = await revision(world.admin)
        assert after == before, f"the store changed (revision {before} -> {after})"
    verb, resource, namespace, name = case.access
    answered = await check_access.CheckAccess(
        authorization_pb2.CheckAccessRequest(verb=verb, resource=resource, namespace=namespace, name=name)
    )
    assert answered.allowed == case.allowed, (
        f"CheckAccess({verb} {resource} {namespace!r} {name!r}) says allowed={answered.allowed}: {answered.reason}"
    )
    assert bool(answered.reason) == (not answered.allowed)


async def clean_up_fresh(case: Case, world: World) -> None:
    """After a fresh object's step that `who` may not take, the admin takes it."""
    kind_name, ns = case.access[1], case.access[2]
    kind = {k.name: k for k in ALL}[kind_name]
    api = kind.api(world.admin)
    verb = case.access[0]
    if verb == "create":
        try:
            await api.get("fresh", ns)
        except grpc.aio.AioRpcError as e:
            assert e.code() == MISSING
            await api.create(fresh_object(kind, ns))
    elif verb == "delete":
        try:
            await api.delete("fresh", ns)
        except grpc.aio.AioRpcError as e:
            assert e.code() == MISSING


@pytest.mark.parametrize("who", PRINCIPALS, ids=[w.label for w in PRINCIPALS])
async def test_every_rpc_answers_as_the_model_says(world: World, who: Who) -> None:
    stubs = world.stubs[who.label]
    check_access = authorization_pb2_grpc.AuthorizationServiceStub(stubs.channel)
    failures: list[str] = []
    denials: dict[tuple[str, ...], dict[str, str]] = {}
    cases = list(cases_for(who, stubs, world.model))
    for case in cases:
        try:
            await run_case(case, who, world, check_access, denials)
        except AssertionError as e:
            failures.append(f"{who.label} {case.what}: {e}")
        if case.writes:
            await clean_up_fresh(case, world)
    for group, messages in denials.items():
        if len(set(messages.values())) > 1:
            failures.append(f"{who.label} {' '.join(group)}: denials differ by object: {messages}")
    assert fingerprint(await stored(world.admin)) == world.initial, f"{who.label}: what is stored changed"
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:60])


async def test_the_table_has_every_outcome_for_every_rpc(world: World) -> None:
    """The model is no rubber stamp: among the principals other than the admin,
    every RPC is both allowed and denied somewhere, and the table as a whole expects
    each status the matrix is about."""
    codes: set[Code] = set()
    outcomes: dict[str, set[bool]] = {}
    for who in PRINCIPALS:
        for case in cases_for(who, world.stubs[who.label], world.model):
            codes.add(case.expect)
            if who.label != "admin":
                outcomes.setdefault(case.what.split()[0], set()).add(case.allowed)
            else:
                assert case.allowed, case.what
    assert codes == {OK, DENIED, MISSING, Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS, Code.ABORTED}
    # n1 binds what its workloads mount and what their accounts list, token secrets included.
    n1_secrets = {("prod", "db"), ("prod", "ghost"), ("prod", "app-conf"), ("prod", "app-token")}
    assert world.model.bound("n1", SECRETS.name) == n1_secrets | {("dev", "cfg"), ("dev", "web-token")}
    assert world.model.bound("n9", SECRETS.name) == set()
    assert len(outcomes) == 6 * len(ALL)
    assert {rpc: both for rpc, both in outcomes.items() if both != {True, False}} == {}
