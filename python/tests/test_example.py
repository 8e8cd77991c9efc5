"""examples/python/game.py runs as written against a server configured like the
development environment."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

from test_bus import run

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "game.py"


def test_the_game_example_runs(server: Any, capsys: Any) -> None:
    spec = importlib.util.spec_from_file_location("game_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    game = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(game)
    run(lambda: game.main(server.grpc, 3, 10))
    out = capsys.readouterr().out
    assert "published 30 state updates over 3 games" in out
    assert "moves: g0: raise, g1: raise, g2: raise" in out
