"""The architecture as a test: the import contracts in pyproject.toml hold
(rooms import only downward, the client never imports the server, the server
uses only the client's public modules), and the list of private client modules
those contracts name is complete, so a new private module is covered too."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import satchel
import satchel._agent
import satcheld

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_server_may_not_import_any_private_client_module() -> None:
    private = {f"satchel.{m.name}" for m in pkgutil.iter_modules(satchel.__path__) if m.name.startswith("_")}
    (contract,) = [c for c in _contracts() if c["type"] == "forbidden" and c["source_modules"] == ["satcheld"]]
    assert set(contract["forbidden_modules"]) == private, "pyproject.toml's list of private client modules is stale"


def _layered(package: str) -> set[str]:
    """The modules named by the layers contract of `package`'s rooms."""
    (layers,) = [c["layers"] for c in _contracts() if c["type"] == "layers" and c["layers"][0].startswith(package)]
    return {name.strip() for layer in layers for name in layer.split("|")}


@pytest.mark.parametrize(("package", "prefix"), [(satcheld, "satcheld"), (satchel._agent, "satchel._agent")])
def test_every_room_is_a_layer_and_says_what_it_is_for(package: Any, prefix: str) -> None:
    rooms = {f"{prefix}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
    assert rooms == _layered(prefix + "."), f"every module and subpackage of {prefix} belongs to exactly one layer"
    for room in rooms:
        doc = importlib.import_module(room).__doc__
        assert doc and len(doc.strip()) > 40, f"{room} has no docstring saying what it is for"
