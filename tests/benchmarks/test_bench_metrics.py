"""Cost of each quality measure on one embedded clip (LJ001-0001, 9.66 s).

The pair is the recording against its own mel through Griffin-Lim (the vocoder ceiling), so
DTW and the alignment do real work. Each measure is timed alone, so it pays for the analyses
it needs (WORLD features and the DTW path for the intrusive ones; both sides' resampling);
`all` shows what `score` costs when measures share them. `extra_info` holds seconds per
audio second (median). ASR and DNSMOS are loaded in the fixture, outside the timing. Run with
`pytest tests/benchmarks/test_bench_metrics.py --benchmark-only`.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ttsbench.metrics import quality
from ttsbench.vocoders.griffin_lim import griffin_lim_copy
from ttsbench.metrics.speaker import SpeakerReference

torch.set_num_threads(1)
CLIP_ID = "LJ001-0001"


@pytest.fixture(scope="module")
def pair(embedded_corpus) -> tuple[np.ndarray, np.ndarray, int, str, SpeakerReference]:
    utterance = embedded_corpus.by_id()[CLIP_ID]
    audio, rate = sf.read(utterance.audio_path, dtype="float32")
    synthesis = griffin_lim_copy(audio, rate)
    speaker = SpeakerReference.from_audio({u.id: sf.read(u.audio_path, dtype="float32")
                                           for u in embedded_corpus.utterances[:4]})
    # compiles DTW, loads the ASR, the speaker encoder and DNSMOS
    quality.score(audio, synthesis, rate, utterance.text, speaker=speaker)
    return audio, synthesis, rate, utterance.text, speaker


def _run(benchmark, pair, names: list[str]) -> None:
    audio, synthesis, rate, text, speaker = pair
    scores = benchmark.pedantic(
        quality.score, args=(audio, synthesis, rate, text, names, speaker), rounds=3, iterations=1, warmup_rounds=0
    )
    assert set(names) <= set(scores.values)  # error rates add their counts
    benchmark.extra_info["audio_seconds"] = round(len(audio) / rate, 3)
    benchmark.extra_info["seconds_per_audio_second"] = round(benchmark.stats.stats.median / (len(audio) / rate), 4)


@pytest.mark.benchmark(group="metrics")
@pytest.mark.parametrize("name", list(quality.METRICS))
def test_bench_metric(benchmark, pair, name):
    _run(benchmark, pair, [name])


@pytest.mark.benchmark(group="metrics")
def test_bench_fast_metrics_together(benchmark, pair):
    _run(benchmark, pair, quality.select_metrics(include_slow=False))


@pytest.mark.benchmark(group="metrics")
def test_bench_all_metrics_together(benchmark, pair):
    _run(benchmark, pair, list(quality.METRICS))
