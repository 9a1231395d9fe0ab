"""`satchelctl`: the command line for Satchel — certificates, resources, rotation, watch, tokens,
access checks, key maintenance.

Every API command connects with `--server --ca --cert --key [--token]` or the `SATCHEL_…`
variables, and prints `-o table` (default), `json` (the protobuf JSON mapping, as grpcurl prints
it) or `yaml`. Secret values never appear in table output or in error messages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

# grpc's core would log its own copy of failures that satchelctl reports in one line;
# GRPC_VERBOSITY=debug (or info) brings them back. Set before grpc loads.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from google.protobuf import json_format
from google.protobuf.message import Message

from satchel import kinds
from satchel._client import Client
from satchel._config import _SOURCES, ClientConfig
from satchel._errors import ConflictError, SatchelError
from satchel.durations import parse_duration
from satchel.kinds import Kind
from satchel.v1 import meta_pb2, secret_pb2

PROG = "satchelctl"
# Usage errors (bad flags, missing settings, unreadable files) exit 2; failed calls exit 1.
EXIT_USAGE = 2
EXIT_FAILED = 1
# Read-merge-write of labels and annotations retries this often when the object changes meanwhile.
_MERGE_ATTEMPTS = 3

_SECRET_TYPES = ("opaque", "tls", "basic-auth", "docker-config-json")


class UsageError(Exception):
    """A problem with the command line or local files: one line on stderr, exit 2."""


# ---------------------------------------------------------------------------------------------
# Output.


def _to_dict(message: Message) -> dict[str, Any]:
    # grpcurl 1.8.6 prints the original proto field names and int64 as strings.
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _dump(value: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(value, indent=2, ensure_ascii=False))
    else:
        print(_yaml(value), end="")


def _yaml_module() -> Any:
    try:
        import yaml  # imported only for -o yaml: the client itself needs no PyYAML
    except ImportError:
        raise UsageError("-o yaml needs PyYAML (pip install PyYAML); -o json needs nothing") from None
    return yaml


def _yaml(value: Any, *, document: bool = False) -> str:
    return _yaml_module().safe_dump(value, sort_keys=False, allow_unicode=True, explicit_start=document)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [[cell or "<none>" for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    for row in [list(headers), *rows]:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _age(meta: meta_pb2.ObjectMeta, now: datetime) -> str:
    if not meta.HasField("create_time"):
        return "<unknown>"
    seconds = max(0, int((now - meta.create_time.ToDatetime(tzinfo=UTC)).total_seconds()))
    for unit, size, limit in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def _short_enum(enum: Any, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower().replace("_", "-")


# ---------------------------------------------------------------------------------------------
# The three resource kinds: how each is shown and built from flags (satchel.kinds names them).


@dataclass(frozen=True)
class _KindCommand:
    """What satchelctl adds to a kind: its command, its table and its flags. Every name
    the API gives the kind (fields, client methods, nouns) comes from `api`."""

    api: Kind  # the kind as the API names it
    command: str  # sa, secret, workload
    aliases: tuple[str, ...]
    columns: tuple[str, ...]
    row: Callable[[Any], list[str]]  # the cells after NAMESPACE and NAME, without AGE
    from_flags: Callable[[argparse.Namespace, bool], dict[str, Any]]  # flags -> client keyword arguments

    def client_method(self, client: Client, verb: str) -> Callable[..., Any]:
        """The client's method for `verb` on this kind: client.get_secret, client.list_secrets, ..."""
        method: Callable[..., Any] = getattr(client, self.api.client_method(verb))
        return method


def _sa_row(sa: Any) -> list[str]:
    return [",".join(ref.name for ref in sa.secrets), sa.spiffe_id]


def _secret_row(secret: Any) -> list[str]:
    keys = ",".join(key.name for key in secret.data_keys)
    return [_short_enum(secret_pb2.SecretType, secret.type, "SECRET_TYPE_"), keys, str(secret.version)]


def _workload_row(workload: Any) -> list[str]:
    return [workload.node_name, workload.service_account]


def _sa_fields(args: argparse.Namespace, create: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.secrets is not None:
        fields["secrets"] = args.secrets
    if args.description is not None:
        fields["description"] = args.description
    return fields


def _secret_fields(args: argparse.Namespace, create: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    data = _secret_data(args)
    if data is not None:
        fields["data"] = data
    if args.immutable:
        fields["immutable"] = True
    if create:
        fields["type"] = args.type
    return fields


def _workload_fields(args: argparse.Namespace, create: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.node is not None:
        fields["node_name"] = args.node
    if args.service_account is not None:
        fields["service_account"] = args.service_account
    if args.secrets is not None:
        fields["secrets"] = args.secrets
    return fields


_SA_COMMAND = _KindCommand(
    kinds.SERVICE_ACCOUNTS, "sa", ("serviceaccount",), ("SECRETS", "SPIFFE-ID"), _sa_row, _sa_fields
)
_SECRET_COMMAND = _KindCommand(kinds.SECRETS, "secret", (), ("TYPE", "KEYS", "VERSION"), _secret_row, _secret_fields)
_WORKLOAD_COMMAND = _KindCommand(
    kinds.WORKLOADS, "workload", (), ("NODE", "SERVICE-ACCOUNT"), _workload_row, _workload_fields
)
_KIND_COMMANDS = (_SA_COMMAND, _SECRET_COMMAND, _WORKLOAD_COMMAND)
# `watch` takes the kinds' names, the plural nouns of the policy file: serviceaccounts, secrets, workloads.
_WATCHED = {command.api.name: command for command in _KIND_COMMANDS}


def _show(kind: _KindCommand, objects: list[Any], output: str, *, many: bool) -> None:
    if output == "table":
        if not objects:
            print(f"no {kind.api.plural_noun} found", file=sys.stderr)
            return
        now = datetime.now(UTC)
        _table(
            ("NAMESPACE", "NAME", *kind.columns, "AGE"),
            ([o.metadata.namespace, o.metadata.name, *kind.row(o), _age(o.metadata, now)] for o in objects),
        )
    else:
        dicts = [_to_dict(o) for o in objects]
        _dump(dicts if many else dicts[0], output)


# ---------------------------------------------------------------------------------------------
# Flag values.


def _duration(text: str) -> timedelta:
    """`--ttl`'s and `--grace-period`'s type: parse_duration, its message in argparse's error."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _pairs(values: list[str] | None, flag: str, *, removable: bool = False) -> tuple[dict[str, str], list[str]]:
    """`k=v` flags as a dict; with `removable`, also the keys of `k-` flags (to remove)."""
    pairs: dict[str, str] = {}
    removed: list[str] = []
    for value in values or ():
        key, eq, rest = value.partition("=")
        if removable and not eq and value.endswith("-") and len(value) > 1:
            removed.append(value[:-1])
        elif eq and key:
            pairs[key] = rest
        else:
            raise UsageError(f"{flag} {value!r}: expected KEY=VALUE" + (" or KEY- to remove" if removable else ""))
    return pairs, removed


def _secret_data(args: argparse.Namespace) -> dict[str, bytes] | None:
    """The data of `--from-literal` and `--from-file` flags, or None if none was given.

    Messages name keys and paths, never values: a mistyped flag may hold a secret.
    """
    if args.from_literal is None and args.from_file is None:
        return None
    data: dict[str, bytes] = {}

    def put(key: str, value: bytes, flag: str) -> None:
        if key in data:
            raise UsageError(f"{flag}: key {key!r} is given twice")
        data[key] = value

    for literal in args.from_literal or ():
        key, eq, value = literal.partition("=")
        if not eq or not key:
            raise UsageError("--from-literal: expected KEY=VALUE (a value with no key is not allowed)")
        put(key, value.encode(), "--from-literal")
    for spec in args.from_file or ():
        key, eq, path = spec.partition("=")
        if not eq:
            key, path = os.path.basename(spec.rstrip("/")), spec
        if not key or not path:
            raise UsageError(f"--from-file {spec!r}: expected [KEY=]PATH")
        try:
            put(key, Path(path).read_bytes(), "--from-file")
        except OSError as e:
            raise UsageError(f"--from-file: cannot read {path}: {e.strerror or e}") from None
    return data


# ---------------------------------------------------------------------------------------------
# Commands.


def _connect(args: argparse.Namespace) -> Client:
    flags = {name: getattr(args, name) for name in ("server", "ca", "cert", "key", "token")}
    missing = [n for n in ("server", "ca", "cert", "key") if not (flags[n] or os.environ.get(_SOURCES[n][1]))]
    if missing:
        given = ", ".join(_SOURCES[name][0] for name in missing)
        env = ", ".join(_SOURCES[name][1] for name in missing)
        raise UsageError(f"missing {given} (or set {env}; `satcheld serve --dev` prints them)")
    try:
        return Client(ClientConfig.from_env(**flags))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _create(client: Client, kind: _KindCommand, args: argparse.Namespace) -> None:
    labels, _ = _pairs(args.label, "--label")
    annotations, _ = _pairs(args.annotation, "--annotation")
    create = kind.client_method(client, "create")
    obj = create(
        args.name, namespace=args.namespace, labels=labels, annotations=annotations, **kind.from_flags(args, True)
    )
    _show(kind, [obj], args.output, many=False)


def _get(client: Client, kind: _KindCommand, args: argparse.Namespace) -> None:
    obj = kind.client_method(client, "get")(args.name, namespace=args.namespace)
    _show(kind, [obj], args.output, many=False)


def _list(client: Client, kind: _KindCommand, args: argparse.Namespace) -> None:
    objects = list(kind.client_method(client, "list")(namespace=args.namespace or "", label_selector=args.selector))
    _show(kind, objects, args.output, many=True)


def _update(client: Client, kind: _KindCommand, args: argparse.Namespace) -> None:
    """Changes the fields given. `--label`/`--annotation` merge into the object's own (`k-`
    removes one): it is read first and written back with its etag (or the one given)."""
    fields = kind.from_flags(args, False)
    labels, unlabel = _pairs(args.label, "--label", removable=True)
    notes, unnote = _pairs(args.annotation, "--annotation", removable=True)
    merge = bool(labels or unlabel or notes or unnote)
    if not fields and not merge:
        raise UsageError(f"nothing to change: give the fields to update (see {PROG} {kind.command} update -h)")
    update = kind.client_method(client, "update")
    for attempt in range(1, _MERGE_ATTEMPTS + 1):
        etag = args.etag or ""
        if merge:
            current = kind.client_method(client, "get")(args.name, namespace=args.namespace).metadata
            etag = etag or current.etag
            if labels or unlabel:
                fields["labels"] = _merged(current.labels, labels, unlabel)
            if notes or unnote:
                fields["annotations"] = _merged(current.annotations, notes, unnote)
        try:
            obj = update(args.name, namespace=args.namespace, etag=etag, **fields)
            break
        except ConflictError:
            # Our own read went stale (no --etag given): read again and merge again.
            if args.etag or not merge or attempt == _MERGE_ATTEMPTS:
                raise
    _show(kind, [obj], args.output, many=False)


def _merged(current: Any, set_: dict[str, str], remove: list[str]) -> dict[str, str]:
    merged = dict(current)
    merged.update(set_)
    for key in remove:
        merged.pop(key, None)
    return merged


def _delete(client: Client, kind: _KindCommand, args: argparse.Namespace) -> None:
    kind.client_method(client, "delete")(args.name, namespace=args.namespace, etag=args.etag or "")
    if args.output == "table":
        print(f"{kind.api.noun} {args.namespace}/{args.name} deleted")
    else:
        _dump({}, args.output)  # the empty DeleteXResponse, as grpcurl prints it


def _rotate(client: Client, args: argparse.Namespace) -> None:
    secret = client.rotate_secret(
        args.name, namespace=args.namespace, data=_secret_data(args), grace_period=args.grace_period
    )
    _show(_SECRET_COMMAND, [secret], args.output, many=False)


def _sa_cert(client: Client, args: argparse.Namespace) -> None:
    """A key made here, its CSR signed by the server for the account; `tls.crt` and `tls.key`
    written into --out (0600) only once the certificate is issued. The key never leaves."""
    from satchel import pki  # cryptography loads only for the commands that make keys

    key = pki.generate_key()
    response = client.issue_certificate(args.name, namespace=args.namespace, csr_pem=pki.make_csr(key), ttl=args.ttl)
    try:
        paths = pki.write_tls(args.out, response.certificate_chain_pem, key)
    except OSError as e:
        raise UsageError(f"cannot write into {args.out}: {e.strerror or e}") from None
    for path in paths:
        print(path)
    print(f"expires {response.expire_time.ToDatetime(tzinfo=UTC).isoformat()}")


def _watch(client: Client, args: argparse.Namespace) -> None:
    """Prints each event as it comes (a line, or a YAML document), flushed, until
    interrupted or the stream fails."""
    kind = _WATCHED[args.kind]
    if args.output == "yaml":
        _yaml_module()  # a missing PyYAML is said now, not at the first event
    stream = kind.client_method(client, "watch")(
        namespace=args.namespace or "",
        label_selector=args.selector,
        since_revision=args.since,
        send_initial=args.initial,
    )
    with stream:
        for event in stream:
            if args.output == "json":
                line = json.dumps(_to_dict(event), separators=(",", ":"), ensure_ascii=False)
            elif args.output == "yaml":
                line = _yaml(_to_dict(event), document=True).rstrip("\n")
            elif event.type == meta_pb2.EVENT_TYPE_BOOKMARK:
                continue  # progress markers: only for machines (-o json)
            else:
                obj = getattr(event, kind.api.field)
                name = f"{obj.metadata.namespace}/{obj.metadata.name}" if obj.metadata.name else "-"
                type_ = meta_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_")
                line = f"{type_:<9} {event.revision:<8} {name}"
            print(line, flush=True)


def _token_to_review(args: argparse.Namespace) -> str:
    """The token from --token-file or stdin: never from the command line, where the
    process list and the shell history would show it."""
    source = args.token_file or "-"
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--token-file: cannot read {source}: {getattr(e, 'strerror', None) or e}") from None
    token = text.strip()
    if not token:
        raise UsageError("no token to review: give it on stdin or with --token-file PATH")
    return token


def _review(client: Client, args: argparse.Namespace) -> None:
    response = client.review_token(_token_to_review(args), audiences=args.audience or [])
    if args.output != "table":
        _dump(_to_dict(response), args.output)
        return
    expires = response.expire_time.ToDatetime(tzinfo=UTC).isoformat() if response.HasField("expire_time") else ""
    _table(
        ("FIELD", "VALUE"),
        [
            ("authenticated", str(response.authenticated).lower()),
            ("username", response.username),
            ("uid", response.uid),
            ("groups", ",".join(response.groups)),
            ("audiences", ",".join(response.audiences)),
            ("expire_time", expires),
            ("reason", response.reason),
        ],
    )


def _jwks(client: Client, args: argparse.Namespace) -> None:
    _dump(client.get_public_keys(), args.output)


def _rotate_signing_key(client: Client, args: argparse.Namespace) -> None:
    response = client.rotate_signing_key()
    if args.output == "table":
        _table(("KEY-ID",), [(response.key_id,)])
    else:
        _dump(_to_dict(response), args.output)


def _can_i(client: Client, args: argparse.Namespace) -> int:
    """`yes` (exit 0) or `no` (exit 1, and why on stderr), as `kubectl auth can-i` does."""
    response = client.check_access(args.verb_asked, args.resource, args.name or "", namespace=args.namespace)
    if response.allowed:
        print("yes")
        return 0
    print("no")
    if response.reason:
        print(response.reason, file=sys.stderr)
    return EXIT_FAILED


def _reseal(client: Client, args: argparse.Namespace) -> None:
    response = client.reseal_secrets(timeout=args.timeout)
    if args.output != "table":
        _dump(_to_dict(response), args.output)
        return
    print(f"re-sealed {response.resealed} sealed values; all are now sealed under key {response.key_id}")


def _certs_init(args: argparse.Namespace) -> None:
    names = ("ca.crt", "ca.key", "server.crt", "server.key", "admin.crt", "admin.key")
    paths = [Path(args.dir) / name for name in names]
    from satchel import pki  # cryptography loads only for the certs commands

    before = {path: _identity(path) for path in paths}
    pki.init(args.dir, trust_domain=args.trust_domain, hosts=args.hosts.split(","))
    for path in paths:
        if _identity(path) != before[path]:
            print(path)
        else:
            print(f"kept existing {path}", file=sys.stderr)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _certs_issue(args: argparse.Namespace) -> None:
    from satchel import pki

    for path in pki.issue(args.dir, args.kind, args.name, ttl=args.ttl):
        print(path)


# ---------------------------------------------------------------------------------------------
# The parser.


def _add_connection(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_argument_group("connection (flags win over the environment)")
    group.add_argument("--server", default=default, help="HOST:PORT of satcheld ($SATCHEL_SERVER)")
    group.add_argument("--ca", default=default, help="CA certificate that signed the server's ($SATCHEL_CA)")
    group.add_argument("--cert", default=default, help="client certificate ($SATCHEL_CERT)")
    group.add_argument("--key", default=default, help="client certificate's key ($SATCHEL_KEY)")
    group.add_argument("--token", default=default, help="bearer token: act as its service account ($SATCHEL_TOKEN)")


def _parents() -> dict[str, argparse.ArgumentParser]:
    # Connection flags go before or after the command; given after, they must not reset the
    # ones given before to None, hence SUPPRESS.
    connection = argparse.ArgumentParser(add_help=False)
    _add_connection(connection, argparse.SUPPRESS)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format (default table)"
    )
    namespace = argparse.ArgumentParser(add_help=False)
    namespace.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    all_namespaces = argparse.ArgumentParser(add_help=False)
    all_namespaces.add_argument("-n", "--namespace", default="", help="namespace (default: all namespaces)")
    all_namespaces.add_argument("-l", "--selector", default="", help="label selector: k=v,k2!=v2,k3")
    meta = argparse.ArgumentParser(add_help=False)
    meta.add_argument("--label", action="append", metavar="K=V", help="a label (repeatable)")
    meta.add_argument("--annotation", action="append", metavar="K=V", help="an annotation (repeatable)")
    etag = argparse.ArgumentParser(add_help=False)
    etag.add_argument("--etag", help="only if the object's etag still matches")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--from-literal", action="append", metavar="K=V", help="a data key and value (repeatable)")
    data.add_argument(
        "--from-file", action="append", metavar="[K=]PATH", help="a data key from a file; key = file name if omitted"
    )
    return {
        "connection": connection,
        "output": output,
        "namespace": namespace,
        "all_namespaces": all_namespaces,
        "meta": meta,
        "etag": etag,
        "data": data,
    }


def _add_kind(sub: Any, kind: _KindCommand, p: dict[str, argparse.ArgumentParser]) -> None:
    api = [p["connection"], p["output"]]
    parser = sub.add_parser(kind.command, aliases=list(kind.aliases), help=kind.api.plural_noun)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(verb: str, parents: list[argparse.ArgumentParser], run: Callable[..., None], help: str) -> Any:
        v = verbs.add_parser(verb, parents=parents, help=help)
        v.set_defaults(run=lambda client, args: run(client, kind, args))
        return v

    data = [p["data"]] if kind is _SECRET_COMMAND else []
    create = add("create", [*api, p["namespace"], p["meta"], *data], _create, f"create a {kind.api.noun}")
    update = add("update", [*api, p["namespace"], p["meta"], p["etag"], *data], _update, f"change a {kind.api.noun}")
    for v in (create, update):
        v.add_argument("name")
    update.epilog = (
        "--label and --annotation merge into the current ones (K- removes one); "
        "repeatable flags such as --secret replace the whole list."
    )
    for verb, run, parents in (("get", _get, [p["namespace"]]), ("delete", _delete, [p["namespace"], p["etag"]])):
        add(verb, [*api, *parents], run, f"{verb} a {kind.api.noun}").add_argument("name")
    add("list", [*api, p["all_namespaces"]], _list, f"list {kind.api.plural_noun}")

    if kind is _SA_COMMAND:
        cert = verbs.add_parser(
            "cert",
            parents=[p["connection"], p["namespace"]],
            help="have the server sign a key made here: writes tls.crt and tls.key into --out",
        )
        cert.add_argument("name")
        cert.add_argument(
            "--out", required=True, metavar="DIR", help="the directory for tls.crt and tls.key (created if missing)"
        )
        cert.add_argument("--ttl", type=_duration, help="lifetime (default 1h; the server caps it at 24h)")
        cert.set_defaults(run=_sa_cert)
        for v in (create, update):
            v.add_argument(
                "--secret",
                dest="secrets",
                action="append",
                metavar="NAME",
                help="a secret its workloads get (repeatable)",
            )
            v.add_argument("--description")
    elif kind is _SECRET_COMMAND:
        for v in (create, update):
            v.add_argument("--immutable", action="store_true", help="refuse later data changes")
        create.add_argument("--type", choices=_SECRET_TYPES, default="opaque", help="secret type (default opaque)")
        update.epilog += " Data is replaced (a new version) only when --from-literal or --from-file is given."
        rotate = verbs.add_parser(
            "rotate", parents=[*api, p["namespace"], p["data"]], help="rotate a secret to a new version"
        )
        rotate.add_argument("name")
        rotate.add_argument(
            "--grace-period", type=_duration, help="how long the previous version stays valid (e.g. 1h)"
        )
        rotate.set_defaults(run=_rotate)
    else:
        create.add_argument("--node", required=True, help="the node it runs on")
        update.add_argument("--node", help="the node it runs on")
        for v in (create, update):
            v.add_argument("--service-account", help="its service account (default: default)")
            v.add_argument(
                "--secret",
                dest="secrets",
                action="append",
                metavar="NAME",
                help="a further secret it mounts (repeatable)",
            )


def build_parser() -> argparse.ArgumentParser:
    p = _parents()
    parser = argparse.ArgumentParser(prog=PROG, description="The Satchel command line.")
    _add_connection(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    certs = sub.add_parser("certs", help="make a local CA and certificates")
    certs_sub = certs.add_subparsers(dest="verb", required=True, metavar="VERB")
    init = certs_sub.add_parser("init", help="write ca, server and admin certificates into DIR")
    init.add_argument("--dir", required=True)
    init.add_argument("--trust-domain", default="satchel.local")
    init.add_argument("--hosts", default="localhost,127.0.0.1", help="server names and IPs, comma-separated")
    init.set_defaults(local=_certs_init)
    issue = certs_sub.add_parser("issue", help="write KIND-NAME.crt/.key signed by the CA in DIR")
    issue.add_argument("--dir", required=True)
    issue.add_argument("kind", choices=("user", "node"))
    issue.add_argument("name")
    issue.add_argument("--ttl", type=_duration, default=timedelta(hours=24), help="lifetime (default 24h)")
    issue.set_defaults(local=_certs_issue)

    for kind in _KIND_COMMANDS:
        _add_kind(sub, kind, p)

    watch = sub.add_parser("watch", parents=[p["connection"], p["all_namespaces"]], help="print changes as they happen")
    watch.add_argument("kind", choices=sorted(_WATCHED))
    watch.add_argument("--since", type=int, default=0, metavar="REV", help="replay the events after revision REV")
    watch.add_argument("--initial", action="store_true", help="first every matching object as ADDED, then SYNCED")
    watch.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table, one JSON event per line, or one YAML document (---) per event",
    )
    watch.set_defaults(run=_watch)

    token = sub.add_parser("token", help="bearer tokens")
    token_sub = token.add_subparsers(dest="verb", required=True, metavar="VERB")
    review = token_sub.add_parser(
        "review",
        parents=[p["connection"], p["output"]],
        help="is a token valid, and whose is it? (the token on stdin, or --token-file)",
    )
    review.add_argument(
        "--token-file", metavar="PATH", help="read the token from PATH (default: stdin, - too); never an argument"
    )
    review.add_argument("--audience", action="append", help="an audience the token must have (repeatable)")
    review.set_defaults(run=_review)
    jwks = token_sub.add_parser("jwks", parents=[p["connection"]], help="print the JWKS that verifies tokens offline")
    jwks.add_argument("-o", "--output", choices=("json", "yaml"), default="json", help="output format (default json)")
    jwks.set_defaults(run=_jwks)

    _add_admin(sub, p)

    auth = sub.add_parser("auth", help="what you may do")
    auth_sub = auth.add_subparsers(dest="verb", required=True, metavar="VERB")
    can_i = auth_sub.add_parser(
        "can-i", parents=[p["connection"]], help="may you do VERB on RESOURCE? prints yes (exit 0) or no (exit 1)"
    )
    can_i.add_argument("verb_asked", metavar="VERB", help="get, list, watch, create, update, delete, rotate, read-data")
    can_i.add_argument("resource", metavar="RESOURCE", help="serviceaccounts, secrets or workloads")
    can_i.add_argument("name", metavar="NAME", nargs="?", help="one object (default: any)")
    can_i.add_argument("-n", "--namespace", default="", help="namespace (default: all namespaces)")
    can_i.set_defaults(run=_can_i)

    return parser


def _add_admin(sub: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """`admin`: key maintenance, for admins only."""
    admin = sub.add_parser("admin", help="key maintenance (admins only)")
    admin_sub = admin.add_subparsers(dest="verb", required=True, metavar="VERB")
    rotate_key = admin_sub.add_parser(
        "rotate-signing-key",
        parents=[p["connection"], p["output"]],
        help="make a new token signing key; the old one verifies its tokens until they expire",
    )
    rotate_key.set_defaults(run=_rotate_signing_key)
    reseal = admin_sub.add_parser(
        "reseal",
        parents=[p["connection"], p["output"]],
        help="seal every stored secret again under the primary encryption key",
        description="Seals the data of every stored secret, history included, again under the server's primary "
        "encryption key, online. Once it reports success, older keys may be removed from the key file. "
        "Cut short, it is simply run again: what it already did is skipped.",
    )
    reseal.add_argument(
        "--timeout", type=_duration, default=timedelta(hours=1), help="how long it may take (default 1h)"
    )
    reseal.set_defaults(run=_reseal)


# ---------------------------------------------------------------------------------------------
# Entry point.


def _fail(error: SatchelError) -> int:
    print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
    for field, description in error.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    if error.request_id:
        print(f"  (request id {error.request_id})", file=sys.stderr)
    return EXIT_FAILED


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM ends a watch (or any command) like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    client: Client | None = None
    try:
        if hasattr(args, "local"):
            args.local(args)
            return 0
        client = _connect(args)
        code: int | None = args.run(client, args)  # most commands return nothing: success
        return code or 0
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SatchelError as e:
        return _fail(e)
    except ValueError as e:  # refused by the client or by satchel.pki before anything was sent
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `satchelctl … | head`: the reader has gone
        _silence_stdout()
        return 0
    except OSError as e:  # a local file (certs)
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: a watch ends as asked; anything else was cut short.
        return 0 if getattr(args, "run", None) is _watch else 130
    finally:
        if client is not None:
            client.close()


def _silence_stdout() -> None:
    # Python flushes stdout at exit; with the reader gone that would fail again, noisily.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
