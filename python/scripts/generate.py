"""Regenerates the gRPC stubs under src/ganglion/v1 from ../proto (grpcio-tools).

Run from the repository root: `.venv/bin/python python/scripts/generate.py`. CI runs it
and fails if the committed stubs differ.
"""

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
OUT = ROOT / "python" / "src"

files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "ganglion" / "v1").glob("*.proto"))
include = str(pathlib.Path(protoc.__file__).parent / "_proto")
code = protoc.main(
    [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *files,
    ]
)
sys.exit(code)
