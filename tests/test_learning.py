"""Proof that a system learns: Glow-TTS speaks unseen digit strings after a minute of CPU training.

Tacotron and DC-TTS have no such test here: on the digits corpus they first speak after
about a thousand steps (Tacotron) and over a thousand joint steps (DC-TTS, whose SSRN must learn
its spectra too), minutes each on one thread, which CI's two cores cannot spend per system.
What checks them in CI instead: a loss that falls when overfitting one batch (each network of
DC-TTS apart), the r schedule changing at its exact steps, teacher-forced and frame-by-frame
decoding agreeing, and the smoke suite end to end; `make bench` measures their time to
intelligible (every seed, validation and test WER), and its README table is that record.
"""

from __future__ import annotations

from ttsbench import models
from ttsbench.data import load_corpus
from ttsbench.fileio import read_jsonl
from ttsbench.synthetic import CorpusSpec, make_corpus
from ttsbench.train import TrainOptions, train


def test_a_short_training_on_a_tiny_digits_corpus_lowers_validation_wer(tmp_path):
    # 60 strings (54 to train on), 450 steps: about 50 s on one thread. Measured: Whisper WER
    # on the 3 unseen validation strings 1.0 at step 150, 0.14 at 300, 0.0 at 450.
    corpus = load_corpus(make_corpus(CorpusSpec("digits", 60, seed=3), tmp_path / "digits", progress=False))
    config = models.get("glow-tts").Config.preset("tiny").with_overrides(["max_inference_frames=400"])
    model = models.build("glow-tts", config, seed=0)
    options = TrainOptions(steps=450, val_every=150, val_utterances=3, progress=False, threads=1,
                           val_metrics=("wer",))
    train(model, corpus, tmp_path / "run", options)
    curve = [(row["step"], row["wer"]) for row in read_jsonl(tmp_path / "run" / "val.jsonl")]
    assert [step for step, _ in curve] == [150, 300, 450]
    first, last = curve[0][1], curve[-1][1]
    assert first >= 0.6, f"an untrained model should not be intelligible: {curve}"
    assert last <= 0.3 and last < first, f"validation WER did not fall: {curve}"
