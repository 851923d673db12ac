"""Shared fixtures. Features are cached once per test session in a private folder."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TTSBENCH_CACHE", tempfile.mkdtemp(prefix="ttsbench-test-cache-"))

import pytest  # noqa: E402

from ttsbench.data import Corpus, load_corpus  # noqa: E402


@pytest.fixture(scope="session")
def embedded_corpus() -> Corpus:
    return load_corpus("embedded")
