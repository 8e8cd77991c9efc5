"""A real `ganglion serve` on free ports for each test (`GANGLION_BIN`, or the workspace's
debug build)."""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "src"))

CONFIG = """
coordinator:
  pools:
    gpu: { gpus: ["0"] }
  quotas:
    claude: { rule: "100 per 1h" }
  queues:
    claude: { quota: claude }
"""


@dataclass
class Served:
    grpc: str
    http: str
    data_dir: pathlib.Path
    process: subprocess.Popen[str]
    config: pathlib.Path

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def restart(self) -> Served:
        """Stops the server and starts another on the same ports and data."""
        self.stop()
        return start(self.data_dir, self.config, grpc=self.grpc, http=self.http)


def binary() -> str:
    found = os.environ.get("GANGLION_BIN")
    if found:
        return found
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "debug" / "ganglion")


def start(data_dir: pathlib.Path, config: pathlib.Path, *, grpc: str = "127.0.0.1:0", http: str = "127.0.0.1:0") -> Served:
    process = subprocess.Popen(
        [binary(), "serve", "--grpc-addr", grpc, "--http-addr", http, "--config", str(config), "--data-dir", str(data_dir)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        line = lines.get(timeout=30)
        if "ganglion serving" in line:
            break

    def after(marker: str) -> str:
        return line.split(marker, 1)[1].split(",")[0].split()[0]

    return Served(after("gRPC on "), after("HTTP on "), data_dir, process, config)


@pytest.fixture
def server() -> Iterator[Served]:
    with tempfile.TemporaryDirectory() as tmp:
        config = pathlib.Path(tmp) / "ganglion.yaml"
        config.write_text(CONFIG)
        served = start(pathlib.Path(tmp) / "data", config)
        try:
            yield served
        finally:
            if served.process.poll() is None:
                served.stop()
