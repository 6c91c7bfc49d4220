"""Servers for the serve tests: each module starts the ones it needs on the int8 SmolLM2
artifact (tests/conftest.py) and stops them at its end."""

from __future__ import annotations

import pytest

from serving import ServerProcess


@pytest.fixture(scope="module")
def start_server(smollm2_edge_int8):
    started: list[ServerProcess] = []

    def start(*args: str, **kw) -> ServerProcess:
        s = ServerProcess(smollm2_edge_int8, *args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def engine(smollm2_edge_int8):
    """The same artifact opened in the test process: the runtime's own answers to compare the
    server's with."""
    from edge.engines import open_model

    return open_model(str(smollm2_edge_int8), max_context=512)
