"""Shared fixtures. Features are cached once per test session in a private folder."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TTSBENCH_CACHE", tempfile.mkdtemp(prefix="ttsbench-test-cache-"))

import pytest  # noqa: E402

from ttsbench.data import Corpus, load_corpus  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for every test: the tiny models lose more to thread hand-offs than
    they gain, and on a busy 2-core machine two threads made torch several times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def embedded_corpus() -> Corpus:
    return load_corpus("embedded")


@pytest.fixture
def network_off(monkeypatch):
    """Every socket connection fails, as on a machine without a network: models must load offline."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test with the network off")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
