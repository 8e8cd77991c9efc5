"""A real `ganglion serve` on free ports, for integration tests (`pytest` fixture
`ganglion_server` comes from `ganglion.pytest_plugin`).

```python
with GanglionServer(config="coordinator:\\n  pools:\\n    gpu: { gpus: ['0'] }\\n") as server:
    bus = await Bus.connect(server.grpc)
```

The binary is `$GANGLION_BIN`, else `ganglion` on the PATH.
"""

from __future__ import annotations

import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
from types import TracebackType


class GanglionServer:
    """Starts `ganglion serve` with `config` (YAML text) on free ports and a fresh data
    directory; stops it on exit. `restart()` starts another on the same ports and data."""

    def __init__(self, config: str = "", *, binary: str | None = None, startup_timeout: float = 30.0) -> None:
        self.binary = binary or os.environ.get("GANGLION_BIN") or shutil.which("ganglion") or "ganglion"
        self._dir = tempfile.TemporaryDirectory(prefix="ganglion-test-")
        self.data_dir = pathlib.Path(self._dir.name) / "data"
        self.config = pathlib.Path(self._dir.name) / "ganglion.yaml"
        self.config.write_text(config)
        self.startup_timeout = startup_timeout
        self.grpc = "127.0.0.1:0"
        self.http = "127.0.0.1:0"
        self.process: subprocess.Popen[str] | None = None
        #: What the server wrote to stderr (its log), line by line.
        self.log: list[str] = []

    def start(self) -> GanglionServer:
        process = subprocess.Popen(
            [self.binary, "serve", "--grpc-addr", self.grpc, "--http-addr", self.http, "--config", str(self.config), "--data-dir", str(self.data_dir)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=self.startup_timeout)
            except queue.Empty:
                process.kill()
                raise RuntimeError(f"ganglion serve did not start within {self.startup_timeout} s") from None
            if line is None:
                raise RuntimeError("ganglion serve exited:\n" + "".join(self.log))
            if "ganglion serving" in line:
                break

        def after(marker: str) -> str:
            return line.split(marker, 1)[1].split(",")[0].split()[0]

        self.grpc, self.http, self.process = after("gRPC on "), after("HTTP on "), process
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def restart(self) -> GanglionServer:
        self.stop()
        return self.start()

    def __enter__(self) -> GanglionServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        self._dir.cleanup()
