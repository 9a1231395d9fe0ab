"""Regenerates the Python code for protos/ into client/satchel/v1/.

The one way generated code is made; CI runs it and fails when the result
differs from what is committed. grpcio-tools is pinned in pyproject.toml.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "client"


def main(argv: list[str] | None = None) -> int:
    """Generates into client/ (or into the directory given as the one argument)."""
    args = sys.argv[1:] if argv is None else argv
    out = pathlib.Path(args[0]) if args else OUT
    generated = out / "satchel" / "v1"
    generated.mkdir(parents=True, exist_ok=True)
    for old in generated.glob("*_pb2*.py*"):
        old.unlink()
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ]
    )
    if code != 0:
        print("protoc failed", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
