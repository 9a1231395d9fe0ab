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

import satchel
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


def test_every_server_room_is_a_layer_and_says_what_it_is_for() -> None:
    (layers,) = [c["layers"] for c in _contracts() if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    rooms = {f"satcheld.{m.name}" for m in pkgutil.iter_modules(satcheld.__path__)}
    assert rooms == named, "every module and subpackage of satcheld belongs to exactly one layer"
    for room in rooms:
        doc = importlib.import_module(room).__doc__
        assert doc and len(doc.strip()) > 40, f"{room} has no docstring saying what it is for"
