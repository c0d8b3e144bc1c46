"""The committed stubs are exactly what protos/plumb.proto generates (run `make protos`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = ["plumb_pb2.py", "plumb_pb2.pyi", "plumb_pb2_grpc.py"]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    shutil.copy(REPO / "protos" / "plumb.proto", tmp_path / "protos" / "plumb.proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            "protos/plumb.proto",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "protos" / name).read_text()
        committed = (REPO / "protos" / name).read_text()
        if fresh != committed:
            pytest.fail(f"protos/{name} is stale: run `make protos` and commit the result")
