"""Measurements: quality against recordings, alignment scores and outcomes, speed, convergence.

Quality tests run on the shortest embedded clip (LJ001-0002, 1.9 s) so the module stays fast;
the ASR is loaded once per session.
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ttsbench import cli
from ttsbench.audio import AudioConfig
from ttsbench.metrics import alignment, convergence, quality, speed
from ttsbench.models.base import ModelConfig, Synthesis, TTSModel

CLIP_ID = "LJ001-0002"
WRONG_TEXT = "Seven purple elephants marched quietly over the frozen mountain lake at dawn."


def with_noise(audio: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """The clip plus white noise at `snr_db` (signal power over noise power, whole clip)."""
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    scale = np.sqrt(np.mean(audio**2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    return (audio + scale * noise).astype(np.float32)


@pytest.fixture(scope="module")
def clip(embedded_corpus) -> tuple[np.ndarray, int, str]:
    utterance = embedded_corpus.by_id()[CLIP_ID]
    audio, rate = sf.read(utterance.audio_path, dtype="float32")
    return audio, rate, utterance.text


# ---- quality ---------------------------------------------------------------------------------


def test_intrusive_scores_are_perfect_on_the_clip_itself(clip):
    audio, rate, _ = clip
    names = ["mcd", "f0_rmse", "f0_gpe", "vuv_error", "mel_l1_dtw", "pesq", "stoi"]
    scores = quality.score(audio, audio, rate, metrics=names).values
    assert scores["mcd"] == scores["f0_rmse"] == scores["f0_gpe"] == scores["vuv_error"] == 0.0
    assert scores["mel_l1_dtw"] == 0.0
    assert scores["pesq"] > 4.4
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-3)


def test_mcd_and_pesq_worsen_monotonically_with_noise(clip):
    audio, rate, _ = clip
    levels = [30, 20, 10, 0]  # dB SNR, cleanest first
    names = ["mcd", "pesq", "stoi"]
    scores = [quality.score(audio, with_noise(audio, snr), rate, metrics=names).values for snr in levels]
    mcd = [s["mcd"] for s in scores]
    pesq = [s["pesq"] for s in scores]
    stoi = [s["stoi"] for s in scores]
    assert 0 < mcd[0] and all(a < b for a, b in zip(mcd, mcd[1:])), mcd
    assert all(a > b for a, b in zip(pesq, pesq[1:])), pesq
    assert stoi[0] > stoi[-1], stoi


def test_time_alignment_is_exact_on_identity_and_undoes_retiming(clip):
    audio, rate, _ = clip
    audio16 = quality.to_eval_rate(audio, rate)
    assert np.array_equal(quality.time_align(audio16, audio16, quality.EVAL_RATE), audio16)
    # Re-time the clip 25% slower, non-uniformly, then score it: alignment must recover it.
    hop = 160
    out_centres = np.arange(int(len(audio16) / 0.8) // hop) * hop
    speed_curve = 0.8 * (1 + 0.2 * np.sin(2 * np.pi * out_centres / quality.EVAL_RATE / 0.7))
    source = np.cumsum(speed_curve) * hop - speed_curve[0] * hop
    slower = quality.wsola(audio16, source[source < len(audio16)], hop, 2 * hop, 40).astype(np.float32)
    aligned = quality.score(audio16, slower, quality.EVAL_RATE, metrics=["stoi", "pesq"]).values
    from pystoi import stoi

    unaligned = stoi(audio16, slower[: len(audio16)], quality.EVAL_RATE)
    assert aligned["stoi"] > 0.9 > unaligned + 0.2
    assert aligned["pesq"] > 2.5


def test_wer_of_the_recording_is_far_below_wer_against_a_wrong_text(clip):
    audio, rate, text = clip
    right = quality.score(None, audio, rate, text, metrics=["wer", "cer"]).values
    wrong = quality.score(None, audio, rate, WRONG_TEXT, metrics=["wer", "cer"]).values
    assert right["wer"] <= 0.1 and right["cer"] < 0.1
    assert wrong["wer"] >= 0.9 and wrong["cer"] > right["cer"] + 0.4


def test_transcripts_do_not_depend_on_what_was_decoded_before(clip):
    audio, rate, _ = clip
    first = quality.transcribe(audio, rate)
    quality.transcribe(with_noise(audio, 0), rate)
    assert quality.transcribe(audio, rate) == first


def test_dnsmos_runs_offline_and_ranks_the_recording_above_noise(embedded_corpus):
    # 4.5 s: DNSMOS doubles it once to reach its 9.01 s window and scores one window (the
    # 1.9 s clip would be doubled to 15.2 s and scored in six).
    audio, rate = sf.read(embedded_corpus.by_id()["LJ001-0011"].audio_path, dtype="float32")
    clean = quality.score(None, audio, rate, metrics=["dnsmos_ovrl", "dnsmos_bak"]).values
    noisy = quality.score(None, with_noise(audio, 0), rate, metrics=["dnsmos_ovrl", "dnsmos_bak"]).values
    assert clean["dnsmos_ovrl"] > noisy["dnsmos_ovrl"] + 1 and clean["dnsmos_bak"] > noisy["dnsmos_bak"] + 1


def test_metric_registry_selects_and_rejects_by_requirements():
    fast = quality.select_metrics(include_slow=False)
    assert {"mcd", "f0_rmse", "vuv_error", "mel_l1_dtw"} <= set(fast) and "wer" not in fast
    assert "wer" not in quality.select_metrics(have_text=False)
    assert all(not quality.METRICS[m].needs_reference_audio for m in quality.select_metrics(have_reference=False))
    with pytest.raises(ValueError, match="wer"):
        quality.resolve_metrics(["wer"], have_reference=True, have_text=False)
    with pytest.raises(KeyError, match="nonsense"):
        quality.resolve_metrics(["nonsense"], have_reference=True, have_text=True)


# ---- alignment scores ------------------------------------------------------------------------


def test_diagonal_score_and_focus_rate_on_identity_and_uniform_attention():
    n = 20
    assert alignment.diagonal_score(np.eye(n)) == 1.0 and alignment.focus_rate(np.eye(n)) == 1.0
    uniform = np.full((n, n), 1.0 / n)
    assert alignment.diagonal_score(uniform) == pytest.approx(1 / n)
    assert alignment.focus_rate(uniform) == pytest.approx(1 / n)


def test_monotonicity_catches_a_planted_backward_jump():
    clean = np.eye(10)
    assert alignment.monotonicity(clean) == (1.0, 1)
    jumped = np.eye(10)[:, [0, 1, 2, 3, 1, 5, 6, 7, 8, 9]]  # step 4 attends token 1 again
    share, largest = alignment.monotonicity(jumped)
    assert share == pytest.approx(8 / 9) and largest == 4


def test_path_word_errors_find_planted_skips_and_repeats():
    text = "the cat sat down"
    words = alignment.token_words(text)
    assert list(words) == [0, 0, 0, -1, 1, 1, 1, -1, 2, 2, 2, -1, 3, 3, 3, 3, -1]
    spoken = np.arange(len(words))
    assert alignment.path_word_errors(spoken, words) == alignment.PathErrors(4, 0, 0)
    skipping = np.array([0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16])  # "cat" never attended
    assert alignment.path_word_errors(skipping, words) == alignment.PathErrors(4, 1, 0)
    repeating = np.concatenate([np.arange(11), np.arange(4, 17)])  # back from "sat" to "cat"
    found = alignment.path_word_errors(repeating, words)
    assert found.skipped == 0 and found.repeated == 2  # "cat" and "sat" spoken twice
    flicker = np.array([0, 1, 2, 4, 3, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 16])  # one-token wobble
    assert alignment.path_word_errors(flicker, words).repeated == 0
    durations = np.array([2, 2, 2, 1, 0, 0, 0, 1, 3, 3, 3, 1, 2, 2, 2, 2, 1])  # "cat" has no frames
    assert alignment.path_word_errors(alignment.durations_path(durations), words).skipped == 1


def test_transcript_word_errors_count_deletions_and_repeats():
    found = alignment.transcript_word_errors("the cat sat on the mat", "the the cat sat mat")
    assert (found.words, found.skipped, found.repeated, found.inserted) == (6, 2, 1, 0)
    phrase = alignment.transcript_word_errors("the cat sat", "the cat the cat sat")
    assert phrase.repeated == 2 and phrase.skipped == 0
    silent = alignment.transcript_word_errors("yes", "")
    assert silent.skipped == 1


def test_early_stop_rule_uses_half_the_reading_time():
    text = "a" * 30  # 2 s at 15 chars/s
    assert alignment.expected_seconds(text) == pytest.approx(2.0)
    assert alignment.stopped_early(0.9, text) and not alignment.stopped_early(1.1, text)


def test_hard_sentence_loader_returns_the_shipped_lines():
    lines = [
        tuple(line.split("|", 1))
        for line in alignment.HARD_SENTENCES.read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sentences = alignment.load_hard_sentences()
    assert sentences == lines and 20 <= len(sentences) <= 30
    texts = dict(sentences)
    assert texts["hard-short-01"] == "Yes." and "the the the" in texts["hard-repeat-01"]
    assert texts["hard-numbers-01"] == "Dr. Smith paid $3.50 on the 2nd of May, 1884."
    assert sum(i.startswith("LJ") for i in texts) >= 8


def test_hard_sentence_loader_names_bad_lines(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nok|Fine.\nno separator\nok|Again.\n", "utf-8")
    with pytest.raises(ValueError) as err:
        alignment.load_hard_sentences(bad)
    assert f"{bad}:3:" in str(err.value) and f"{bad}:4: duplicate" in str(err.value)


# ---- fake systems for speed and outcome tests ------------------------------------------------


class SleepyModel(TTSModel):
    """infer sleeps a known time and returns a known number of frames (diagonal attention)."""

    def __init__(self, seconds: float, frames_per_char: int, stop: bool = True):
        super().__init__(ModelConfig(audio=AudioConfig(griffin_lim_iters=2)), num_symbols=40)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seconds, self.frames_per_char, self.stop = seconds, frames_per_char, stop

    def training_step(self, batch, step, network="model"):
        return {"loss": self.weight.sum()}

    def alignment(self, batch):
        return []

    def infer(self, text_ids):
        time.sleep(self.seconds)
        n = len(text_ids)
        frames = n * self.frames_per_char
        attention = np.repeat(np.eye(n), self.frames_per_char, axis=1)
        mel = np.full((frames, 80), -4.0, dtype=np.float32)
        linear = np.full((frames, self.config.audio.n_freq), -4.0, dtype=np.float32)  # skips the slow mel inversion
        return Synthesis(mel=mel, audio_config=self.config.audio, linear=linear, alignment=attention, stopped=self.stop)


def test_rtf_of_a_sleeping_model_matches_the_sleep():
    sleep = 0.05
    model = SleepyModel(sleep, frames_per_char=5)
    sentences = speed.length_spread_sentences(3)
    table = speed.measure_rtf(model, sentences, repeats=3, warmup=1, progress=False)
    assert list(table.columns) == list(speed.COLUMNS) and len(table) == 3
    assert table["chars"].is_monotonic_increasing
    hop, rate = model.config.audio.hop_length, model.config.audio.sample_rate
    for row in table.itertuples():
        assert row.frames == (row.chars + 1) * 5  # + EOS
        assert row.audio_seconds == pytest.approx((row.frames - 1) * hop / rate)  # centred STFT frames
        assert sleep <= row.acoustic_seconds < sleep * 1.5
        assert row.rtf_acoustic == pytest.approx(sleep / row.audio_seconds, rel=0.5)
        assert row.rtf_acoustic == pytest.approx(row.acoustic_seconds / row.audio_seconds)
        assert row.total_seconds >= row.acoustic_seconds
    assert table.attrs["device"] == "cpu" and table.attrs["threads"] == 1
    assert "VmHWM" in table.attrs["memory_method"]


def test_length_spread_runs_from_shortest_to_longest_test_sentence():
    picks = speed.length_spread_sentences(5)
    lengths = [len(t) for _, t in picks]
    assert lengths == sorted(lengths) and len(picks) == 5
    assert picks[0][0] in {"LJ009-0074", "LJ009-0126"} and picks[-1][0] == "LJ037-0001"


def test_training_steps_per_second_from_a_log(tmp_path):
    rows = [{"step": s, "seconds": 2.0 + 0.5 * s, "loss": 1.0} for s in range(0, 11)]
    lines = [json.dumps(r) for r in rows] + ['{"step": 11, "event": "diverged"}']
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    assert speed.training_steps_per_second(tmp_path) == pytest.approx(2.0)


@pytest.mark.filterwarnings("ignore:n_fft=1024 is too large")  # the hurried "yes" is 4 frames long
def test_hard_sentence_outcomes_flag_guard_and_early_stops():
    sentences = [("a", "the cat sat on the mat"), ("b", "yes")]
    guarded = alignment.hard_sentence_outcomes(
        SleepyModel(0.0, 4, stop=False), sentences, use_asr=False, progress=False
    )
    assert guarded["hit_guard"].all() and (guarded["path_skipped"] == 0).all()
    assert not guarded["stopped_early"].any()  # 4 frames a character: 0.7 of the reading time
    hurried = alignment.hard_sentence_outcomes(SleepyModel(0.0, 1), sentences, use_asr=False, progress=False)
    assert hurried["stopped_early"].all()  # 1 frame a character: 0.17 of the reading time
    summary = alignment.summarise_outcomes(hurried)
    assert summary["stopped_early"] == 2 and summary["hit_guard"] == 0 and summary["path_skipped"] == 0


# ---- convergence -----------------------------------------------------------------------------


@pytest.fixture
def planted_curve() -> pd.DataFrame:
    return pd.DataFrame({
        "step": [0, 100, 200, 300, 400],
        "seconds": [0.0, 10.0, 25.0, 45.0, 70.0],
        "mel_l1_dtw": [5.0, 4.0, 3.0, 2.5, 2.0],
        "diagonal_score": [0.1, 0.2, 0.5, 0.7, 0.6],
    })


def test_threshold_best_and_auc_on_a_planted_curve(planted_curve):
    assert convergence.time_to_threshold(planted_curve, "mel_l1_dtw", 3.0) == (200.0, 25.0)
    assert convergence.time_to_threshold(planted_curve, "diagonal_score", 0.5) == (200.0, 25.0)
    assert convergence.time_to_threshold(planted_curve, "mel_l1_dtw", 1.0) == (float("inf"), float("inf"))
    # (450 + 350 + 275 + 225) / 400
    assert convergence.area_under_curve(planted_curve, "mel_l1_dtw") == pytest.approx(3.25)
    # over seconds: (45 + 52.5 + 55 + 56.25) / 70
    assert convergence.area_under_curve(planted_curve, "mel_l1_dtw", "seconds") == pytest.approx(208.75 / 70)
    summary = convergence.summarise_curve(planted_curve, "diagonal_score", 0.65)
    assert summary["steps_to_threshold"] == 300 and summary["seconds_to_threshold"] == 45
    assert summary["best"] == 0.7 and summary["best_step"] == 300 and summary["final"] == 0.6


def test_time_to_a_confirmed_target_reads_the_confirmation_curve():
    from ttsbench.metrics.summary import time_to

    def row(metric: str, step: int, value: float) -> dict:
        return {"metric": metric, "step": step, "seconds": step / 10, "value": value}

    # the four screened utterances met WER 0.2 at steps 200 and 400; the twenty that confirm it
    # only at step 400
    screened = [row("val/wer", 100, 0.6), row("val/wer", 200, 0.1), row("val/wer", 400, 0.2)]
    confirmed = screened + [row("val/confirm_wer", 200, 0.35), row("val/confirm_wer", 400, 0.18)]
    assert time_to("val/wer", 0.2, False)(pd.DataFrame(screened)) == 200
    assert time_to("val/wer", 0.2, False)(pd.DataFrame(confirmed)) == 400
    assert time_to("val/wer", 0.2, False, "seconds")(pd.DataFrame(confirmed)) == 40


def test_median_and_spread_across_seeds(planted_curve):
    curves = []
    for seed, shift in enumerate([0.0, 0.5, 10.0]):  # the third seed never reaches 3.0
        curve = planted_curve.assign(seed=seed, system="x", mel_l1_dtw=planted_curve["mel_l1_dtw"] + shift)
        curves.append(curve)
    table = convergence.per_seed(pd.concat(curves), "mel_l1_dtw", 3.0)
    assert table["steps_to_threshold"].tolist() == [200.0, 300.0, float("inf")]
    spread = convergence.across_seeds(table).set_index("quantity")
    assert spread.loc["steps_to_threshold", "median"] == 300.0
    assert spread.loc["steps_to_threshold", "max"] == float("inf")
    assert spread.loc["best", "min"] == 2.0 and spread.loc["best", "max"] == 12.0
    assert spread.loc["best", "seeds"] == 3 and spread.loc["best", "reached"] == 2


# ---- the score command -----------------------------------------------------------------------


def test_score_cli_writes_per_utterance_and_summary_rows(tmp_path, embedded_corpus, capsys):
    ref, syn = tmp_path / "ref", tmp_path / "syn"
    ref.mkdir()
    syn.mkdir()
    for utt_id in ("LJ001-0002", "LJ001-0013"):
        audio, rate = sf.read(embedded_corpus.by_id()[utt_id].audio_path, dtype="float32")
        sf.write(ref / f"{utt_id}.wav", audio, rate)
        sf.write(syn / f"{utt_id}.wav", with_noise(audio, 20), rate)
    out = tmp_path / "scores.csv"
    args = ["score", "--ref", str(ref), "--syn", str(syn), "--metrics", "mcd,stoi", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["kind"], r["id"], r["metric"]) for r in rows] == [
        ("utterance", "LJ001-0002", "mcd"), ("utterance", "LJ001-0002", "stoi"),
        ("utterance", "LJ001-0013", "mcd"), ("utterance", "LJ001-0013", "stoi"),
        ("set", "", "mcd"), ("set", "", "stoi"),
    ]
    mean_mcd = np.mean([float(r["value"]) for r in rows[:4] if r["metric"] == "mcd"])
    assert float(rows[4]["value"]) == pytest.approx(mean_mcd) and rows[4]["unit"] == "dB"
    assert float(rows[4]["low"]) <= mean_mcd <= float(rows[4]["high"])
    assert "mcd" in capsys.readouterr().out

    sf.write(syn / "extra.wav", np.zeros(8000, dtype=np.float32), 22050)
    (ref / "LJ001-0013.wav").unlink()
    assert cli.main(["score", "--ref", str(ref), "--syn", str(syn), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no reference" in err and "LJ001-0013" in err and "extra" in err
