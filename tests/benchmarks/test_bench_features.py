"""Feature extraction for the embedded corpus: cold cache (compute + write) vs warm (read)."""

from __future__ import annotations

import itertools

import pytest

from ttsbench.audio import AudioConfig
from ttsbench.batches import load_examples
from ttsbench.featurecache import FeatureCache

KINDS = ("mel", "linear")


@pytest.fixture(scope="module")
def utterances(embedded_corpus):
    return embedded_corpus.utterances


def test_features_cold_cache(benchmark, utterances, tmp_path):
    counter = itertools.count()

    def fresh_cache():
        root = tmp_path / f"cold-{next(counter)}"
        return (utterances, AudioConfig()), {"kinds": KINDS, "cache": FeatureCache(AudioConfig(), root), "progress": False}

    benchmark.group = "features (24 embedded clips, mel + linear)"
    examples = benchmark.pedantic(load_examples, setup=fresh_cache, rounds=3, iterations=1)
    assert len(examples) == 24


def test_features_warm_cache(benchmark, utterances, tmp_path):
    cache = FeatureCache(AudioConfig(), tmp_path / "warm")
    load_examples(utterances, AudioConfig(), kinds=KINDS, cache=cache, progress=False)
    benchmark.group = "features (24 embedded clips, mel + linear)"
    examples = benchmark(load_examples, utterances, AudioConfig(), kinds=KINDS, cache=cache, progress=False)
    assert len(examples) == 24
