"""pytest fixtures (registered through the `pytest11` entry point when `ganglion` is
installed): `ganglion_server`, a real `ganglion serve` per test (its config from the
`ganglion_config` fixture, empty unless a test module overrides it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ganglion.server import GanglionServer


@pytest.fixture
def ganglion_config() -> str:
    """The YAML the `ganglion_server` fixture starts with; override it to configure."""
    return ""


@pytest.fixture
def ganglion_server(ganglion_config: str) -> Iterator[GanglionServer]:
    with GanglionServer(ganglion_config) as server:
        yield server
