"""The client's types as a type checker sees them: every method's per-call options (`timeout=`,
`metadata=`; watches: `metadata=` only) are part of its static signature, so code that passes them
type-checks and code that passes a wrong one does not. The project's own mypy, with the
`[tool.mypy]` config of pyproject.toml, checks two small snippets: one that must be clean, one
whose every line marked `# E: <code>` must be reported with that code, and nothing else.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Unpack

import pytest
from google.protobuf.descriptor import FieldDescriptor

from satchel import _methods, _requests, _rpc_status

ROOT = Path(__file__).resolve().parent.parent

# Options given and results read as a user would: this must type-check.
TYPED = """
    from datetime import timedelta
    from typing import assert_type

    from satchel import AsyncClient, AsyncListIterator, AsyncWatchStream, Client, ListIterator, Secret, WatchStream
    from satchel.v1.authorization_pb2 import CheckAccessResponse
    from satchel.v1.secret_pb2 import WatchSecretsResponse


    def blocking(client: Client) -> None:
        secret = client.get_secret("x", timeout=5, metadata=[("x-request-id", "r")])
        assert_type(secret, Secret)
        client.get_secret("x", namespace="ops", timeout=timedelta(seconds=2), metadata={"x-request-id": b"r"})
        client.get_secret("x", timeout=None, metadata=None)
        client.create_secret("db", data={"password": "pw"}, timeout=2.5)
        client.delete_secret("db", etag="e1", metadata={"x-trace": "t"})
        client.get_public_keys(timeout=1)
        assert_type(client.check_access("get", "secrets", "db", namespace="prod", timeout=1), CheckAccessResponse)
        assert_type(client.list_secrets(timeout=1.5), ListIterator[Secret])
        stream = client.watch_secrets(since_revision=7, metadata=[("x-request-id", "r")])
        assert_type(stream, WatchStream[WatchSecretsResponse])


    async def asynchronous(client: AsyncClient) -> None:
        assert_type(await client.get_secret("x", timeout=5, metadata=[("x-request-id", "r")]), Secret)
        listing = client.list_secrets(timeout=1.5)
        assert_type(listing, AsyncListIterator[Secret])
        async for secret in listing:
            assert_type(secret, Secret)
        await client.review_token("t", audiences=["a"], timeout=timedelta(seconds=1), metadata={"k": "v"})
        assert_type(await client.check_access("list", "workloads", metadata={"k": "v"}), CheckAccessResponse)
        stream = client.watch_secrets(metadata={"x-request-id": "r"})
        assert_type(stream, AsyncWatchStream[WatchSecretsResponse])
"""

# Options a method does not take, or of the wrong type: each marked line must be reported.
MISTYPED = """
    from satchel import AsyncClient, Client


    def blocking(client: Client) -> None:
        client.watch_secrets(timeout=5)  # E: call-arg
        client.watch_workloads(namespace="n", timeout=5, metadata={"k": "v"})  # E: call-arg
        client.get_secret("x", timeout="5")  # E: arg-type
        client.get_secret("x", metadata="x-request-id")  # E: arg-type
        client.list_secrets(timout=1.5)  # E: call-arg


    async def asynchronous(client: AsyncClient) -> None:
        client.watch_service_accounts(timeout=5)  # E: call-arg
        await client.get_secret("x", metadata=42)  # E: arg-type
"""

_REPORT = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<severity>\w+): (?P<message>.*?)(?:  \[(?P<code>[\w-]+)\])?$")


@pytest.fixture(scope="module")
def mypy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """One run of the project's mypy over both snippets: each snippet's errors as (line, code, message)."""
    d = tmp_path_factory.mktemp("typed-snippets")
    snippets = {"typed_calls": TYPED, "mistyped_calls": MISTYPED}
    paths = {}
    for name, text in snippets.items():
        paths[name] = d / f"{name}.py"
        paths[name].write_text(textwrap.dedent(text).lstrip())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(d / ".mypy_cache"),
            *map(str, paths.values()),
        ],
        cwd=ROOT,  # the config's mypy_path is relative to it
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 2: mypy itself failed
    errors: dict[str, list[tuple[int, str, str]]] = {name: [] for name in snippets}
    by_path = {str(path): name for name, path in paths.items()}
    for line in result.stdout.splitlines():
        report = _REPORT.match(line)
        if report and report["severity"] == "error" and report["path"] in by_path:
            errors[by_path[report["path"]]].append((int(report["line"]), report["code"] or "", report["message"]))
    return errors


def test_calls_with_per_call_options_type_check(mypy) -> None:
    assert mypy["typed_calls"] == []


def test_options_a_method_does_not_take_are_type_errors(mypy) -> None:
    lines = textwrap.dedent(MISTYPED).lstrip().splitlines()
    expected = {(n, m[1]) for n, text in enumerate(lines, 1) if (m := re.search(r"# E: ([\w-]+)$", text))}
    assert len(expected) == 7
    reported = {(line, code) for line, code, _ in mypy["mistyped_calls"]}
    assert reported == expected, mypy["mistyped_calls"]
    watch_timeouts = [message for line, code, message in mypy["mistyped_calls"] if code == "call-arg"]
    assert sum('Unexpected keyword argument "timeout"' in m for m in watch_timeouts) == 3, watch_timeouts


# ---------------------------------------------------------------------------------------------
# The options are declared once, by the builders, and every method shows them at runtime.


def test_every_builder_takes_the_options_of_its_kind_of_call() -> None:
    for name, build in vars(_requests).items():
        if not inspect.isfunction(build) or name.startswith("_") or build.__module__ != _requests.__name__:
            continue
        *_, last = inspect.signature(build).parameters.values()
        call = inspect.signature(build).return_annotation.split("[")[0]
        expected = "WatchOptionsArgs" if call == "WatchCall" else "CallOptionsArgs"
        assert (last.kind, last.annotation) == (inspect.Parameter.VAR_KEYWORD, f"Unpack[{expected}]"), name


def test_a_builder_without_the_options_is_refused_when_its_method_is_made() -> None:
    def get_thing(name: str) -> _requests.UnaryCall[None]:
        raise AssertionError("never called")

    def get_nothing() -> _requests.UnaryCall[None]:
        raise AssertionError("never called")

    def watch_things(**options: Unpack[_requests.CallOptionsArgs]) -> _requests.WatchCall[Any]:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"get_thing\(\) must take \*\*options: Unpack\[CallOptionsArgs\]"):
        _methods.unary(get_thing)
    with pytest.raises(TypeError, match=r"get_nothing\(\) must take \*\*options"):
        _methods.async_unary(get_nothing)
    with pytest.raises(TypeError, match=r"watch_things\(\) must take \*\*options: Unpack\[WatchOptionsArgs\]"):
        _methods.watch(watch_things)


def test_the_runtime_signature_spells_out_the_options_of_the_typed_dict() -> None:
    from satchel import AsyncClient, Client

    for client in (Client, AsyncClient):
        get = inspect.signature(client.get_secret).parameters
        assert [(p.name, p.annotation) for p in get.values()][-2:] == [
            ("timeout", "float | timedelta | None"),
            ("metadata", "Metadata | None"),
        ]
        watch = inspect.signature(client.watch_secrets).parameters
        assert [(p.name, p.annotation) for p in watch.values()][-2:] == [
            ("metadata", "Metadata | None"),
            ("max_backoff", "float | None"),
        ]
        assert "options" not in get and "options" not in watch
    assert list(_requests.CallOptionsArgs.__annotations__) == ["timeout", "metadata"]
    assert list(_requests.WatchOptionsArgs.__annotations__) == ["metadata", "max_backoff"]


# ---------------------------------------------------------------------------------------------
# satchel._rpc_status declares its messages' fields for type checkers; they are the descriptors'.


def test_the_declared_rpc_status_messages_have_the_descriptors_fields() -> None:
    tree = ast.parse(Path(_rpc_status.__file__).read_text())
    (declared,) = [
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING" and n.orelse
    ]
    scalar = {
        FieldDescriptor.TYPE_STRING: "str",
        FieldDescriptor.TYPE_BYTES: "bytes",
        FieldDescriptor.TYPE_INT32: "int",
    }

    def fields(cls: ast.ClassDef) -> dict[str, str]:
        """A declared class's fields: scalars by their annotation, repeated and map fields (read-only
        properties) as "repeated"."""
        return {
            **{n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)},
            **{n.name: "repeated" for n in cls.body if isinstance(n, ast.FunctionDef)},
        }

    classes = {n.name: n for n in declared.body if isinstance(n, ast.ClassDef)}
    nested = {f"{c.name}.{n.name}": n for c in classes.values() for n in c.body if isinstance(n, ast.ClassDef)}
    for name, cls in {**classes, **nested}.items():
        descriptor = _rpc_status._pool.FindMessageTypeByName(f"google.rpc.{name}")
        expected = {f.name: "repeated" if f.is_repeated else scalar[f.type] for f in descriptor.fields}
        assert fields(cls) == expected, name
    for name in ("Status", "ErrorInfo", "BadRequest"):
        assert getattr(_rpc_status, name).DESCRIPTOR.full_name == f"google.rpc.{name}"
