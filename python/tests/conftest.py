"""The SDK's own tests: the package from the source tree, and the plugin's fixtures with
the coordinator configured. `GANGLION_BIN` names the server (the test command passes
this build's)."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "src"))
# Run by hand: the workspace's debug build.
os.environ.setdefault(
    "GANGLION_BIN", str(pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "ganglion")
)

from ganglion.pytest_plugin import ganglion_server  # noqa: E402, F401
from ganglion.server import GanglionServer  # noqa: E402

CONFIG = """
coordinator:
  pools:
    gpu: { gpus: ["0"] }
  quotas:
    claude: { rule: "100 per 1h" }
  queues:
    claude: { quota: claude }
"""


@pytest.fixture
def ganglion_config() -> str:
    return CONFIG


@pytest.fixture
def server(ganglion_server: GanglionServer) -> GanglionServer:
    return ganglion_server
