"""The trainer: schedules at exact steps, resume without gaps, clean stop on NaN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ttsbench import cli, models, vocoders
from ttsbench.fileio import read_jsonl
from ttsbench.train import QualityTarget, TrainOptions, build_optimizer, train

SCHEDULE = "gradual_training=[[0, 5, 4], [3, 3, 4], [6, 2, 2]]"
OVERRIDES = [SCHEDULE, "max_decoder_steps=40"]


def tacotron():
    cls = models.get("tacotron-gradual")
    return models.build("tacotron-gradual", cls.Config.tiny().with_overrides(OVERRIDES), seed=1)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def options(steps: int, **kw) -> TrainOptions:
    defaults = dict(steps=steps, seed=1, device="cpu", log_every=1, val_every=0, checkpoint_every=100, progress=False)
    return TrainOptions(**{**defaults, **kw})


def test_log_follows_schedule_at_exact_steps(tmp_path, embedded_corpus):
    result = train(tacotron(), embedded_corpus, tmp_path, options(9, val_every=9))
    rows = read_log(tmp_path)
    assert [r["step"] for r in rows] == list(range(9))
    assert [r["r"] for r in rows] == [5, 5, 5, 3, 3, 3, 2, 2, 2]
    assert [r["batch_size"] for r in rows] == [4, 4, 4, 4, 4, 4, 2, 2, 2]
    assert [r["samples"] for r in rows] == [4, 8, 12, 16, 20, 24, 26, 28, 30]
    assert all(r["seconds"] > 0 for r in rows) and rows == sorted(rows, key=lambda r: r["seconds"])
    for row in rows:
        assert {"loss", "mel_loss", "linear_loss", "stop_loss", "lr", "grad_norm"} <= set(row)
    assert result.state == "finished" and result.steps == 9
    val = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [9]
    assert {"mel_l1_dtw", "diagonal_score", "focus_rate", "stopped"} <= set(val[0])
    assert list((tmp_path / "alignments").glob("step_00000009.npz"))
    assert json.loads((tmp_path / "result.json").read_text())["state"] == "finished"


def test_resume_continues_the_same_log_without_gap_or_repeat(tmp_path, embedded_corpus):
    straight = tmp_path / "straight"
    train(tacotron(), embedded_corpus, straight, options(8))

    resumed = tmp_path / "resumed"
    train(tacotron(), embedded_corpus, resumed, options(4, checkpoint_every=2))
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == 4
    with (resumed / "log.jsonl").open("a") as log:  # a row the killed run wrote after its last checkpoint
        log.write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
    train(tacotron(), embedded_corpus, resumed, options(8, checkpoint_every=2))

    a, b = read_log(straight), read_log(resumed)
    assert [r["step"] for r in b] == list(range(8))
    assert [r["r"] for r in b] == [r["r"] for r in a]
    assert [r["samples"] for r in b] == [r["samples"] for r in a]
    for ra, rb in zip(a, b):  # same data order and dropout randomness as the uninterrupted run
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)


def test_injected_nan_stops_cleanly_and_keeps_last_checkpoint(tmp_path, embedded_corpus, monkeypatch):
    cls = models.get("tacotron-gradual")
    original = cls.training_step

    def poisoned(self, batch, step, *args):
        losses = original(self, batch, step, *args)
        if step == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(cls, "training_step", poisoned)
    result = train(tacotron(), embedded_corpus, tmp_path, options(8, checkpoint_every=1))
    assert result.state == "diverged" and result.steps == 3
    assert "diverged at step 3: loss is nan" in result.message
    assert f"the last good checkpoint (step 3) is kept in {tmp_path / 'checkpoint.pt'}" in result.message
    rows = read_log(tmp_path)
    assert rows[-1]["event"] == "diverged" and rows[-1]["step"] == 3
    assert [r["step"] for r in rows[:-1]] == [0, 1, 2]
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    tensors = [v for v in checkpoint["model"].values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert tensors and all(torch.isfinite(v).all() for v in tensors)
    assert json.loads((tmp_path / "result.json").read_text())["state"] == "diverged"

    out = tmp_path / "cli"
    code = cli.main(["train", "tacotron-gradual", "--steps", "6", "--quiet", "--out", str(out),
                     "--val-every", "0", "--set", SCHEDULE, "--device", "cpu"])
    assert code == 3


def test_cli_train_then_synth(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "tacotron-gradual", "--steps", "3", "--quiet", "--out", str(out), "--val-every", "0",
                     "--set", SCHEDULE, "--set", "max_decoder_steps=20", "--device", "cpu"]) == 0
    assert cli.main(["synth", str(out / "checkpoint.pt"), "Printing, in the only sense.", "-o", str(tmp_path / "a.wav")]) == 0
    printed = capsys.readouterr().out
    assert "CUT BY THE MAX-LENGTH GUARD" in printed or "stopped by itself" in printed
    assert (tmp_path / "a.wav").stat().st_size > 1000
    # A different config into the same folder is refused rather than silently mixed.
    assert cli.main(["train", "tacotron-gradual", "--steps", "3", "--quiet", "--out", str(out), "--device", "cpu"]) == 2
    assert cli.main(["train", "no-such-system", "--out", str(tmp_path / "x")]) == 2


def test_wall_time_budget_ends_training_and_a_resume_does_not_extend_it(tmp_path, embedded_corpus):
    # a budget of a few steps; on a slow or busy machine one step can take it all, which is still a pass
    budget = options(None, max_seconds=3.0, val_every=0, checkpoint_every=1000)
    first = train(tacotron(), embedded_corpus, tmp_path, budget)
    seconds = [row["seconds"] for row in read_log(tmp_path)]
    assert all(s < 3.0 for s in seconds[:-1]) and seconds[-1] >= 3.0  # the step that crossed it was the last
    assert first.steps == len(seconds)
    again = train(tacotron(), embedded_corpus, tmp_path, budget)
    assert again.steps == first.steps  # the budget was already spent: no further step
    with pytest.raises(ValueError, match="needs a budget"):
        options(None)


def test_validation_can_score_quality_measures_on_vocoded_audio(tmp_path, embedded_corpus):
    """validation.metrics: the trainer logs MCD of the vocoded validation synthesis, and
    `validate` gives exactly what scoring that synthesis by hand gives."""
    from ttsbench.audio import read_mono
    from ttsbench.metrics.quality import score
    from ttsbench.train import SPLIT_SEED, load_model_examples, pad_values, validate

    train(tacotron(), embedded_corpus, tmp_path, options(2, val_every=2, val_utterances=1, val_metrics=("mcd",)))
    [row] = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert row["step"] == 2 and 0 < row["mcd"] < 100 and "mel_l1_dtw" in row

    model = tacotron().eval()
    utterance = embedded_corpus.split(seed=SPLIT_SEED)["val"][0]
    examples = load_model_examples(model, [utterance], progress=False)
    with torch.no_grad():
        torch.manual_seed(5)
        result = validate(model, examples, pad_values(model), torch.device("cpu"), [utterance.audio_path], ["mcd"])
        torch.manual_seed(5)
        synthesis = model.infer(torch.from_numpy(examples[0].text_ids))
    waveform = vocoders.for_model(vocoders.DEFAULT, model).vocode(synthesis)  # validation's default vocoder
    audio, rate = waveform.audio, waveform.sample_rate
    expected = score(read_mono(utterance.audio_path, rate)[0], audio, rate, utterance.text, ["mcd"]).values["mcd"]
    assert result.metrics["mcd"] == pytest.approx(expected, rel=1e-6)
    [(utt_id, heard, heard_rate)] = result.audio  # what was scored, for TensorBoard
    assert utt_id == utterance.id and heard_rate == rate and np.array_equal(heard, audio)
    with pytest.raises(ValueError, match="one recording per validation example"):
        validate(model, examples, pad_values(model), torch.device("cpu"), [], ["mcd"])


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "radam"])
def test_the_trainer_optimizer_updates_as_torch_default_one(optimizer: str) -> None:
    """Adam and AdamW run fused and RAdam foreach (speed): the same update as torch's plain loop."""
    model = models.build("glow-tts", models.config_for("glow-tts", "tiny").with_overrides(
        [f"optimizer={optimizer}", "weight_decay=0.01"]), seed=0)
    params = list(model.parameters())[:6]
    initial = [p.detach().clone() for p in params]
    twins = [p.detach().clone().requires_grad_() for p in params]
    ours = build_optimizer(model, params)
    config = model.config
    plain = type(ours)(twins, lr=config.learning_rate, betas=tuple(config.betas), eps=config.eps,
                       weight_decay=config.weight_decay, foreach=False)
    assert ours.defaults["fused" if optimizer != "radam" else "foreach"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, twin in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=generator)
            twin.grad = p.grad.clone()
        ours.step()
        plain.step()
    for p, twin, p0 in zip(params, twins, initial):
        assert not torch.equal(p, p0) and torch.allclose(p, twin, rtol=1e-5, atol=1e-7)


def test_quality_target_needs_consecutive_validations_in_its_direction():
    target = QualityTarget((("wer", 0.2), ("diagonal_score", 0.5)), consecutive=2)
    good, bad_wer, bad_diag = {"wer": 0.1, "diagonal_score": 0.6}, {"wer": 0.3, "diagonal_score": 0.6}, {"wer": 0.0}
    assert target.met(good) and not target.met(bad_wer) and not target.met(bad_diag)
    assert not target.met({"wer": float("nan"), "diagonal_score": 0.9})
    assert not target.reached([good]) and not target.reached([good, bad_wer])
    assert target.reached([bad_wer, good, good])
    assert not QualityTarget(()).reached([good, good])


def test_a_confirmed_target_is_met_only_where_the_confirmation_meets_it_too():
    target = QualityTarget((("wer", 0.2),), confirm=True)
    lucky = {"wer": 0.1, "confirm_wer": 0.4}  # four easy utterances; twenty tell otherwise
    assert target.screened(lucky) and not target.met(lucky)
    assert not target.met({"wer": 0.1})  # screened but not yet confirmed
    assert target.met({"wer": 0.2, "confirm_wer": 0.15}) and target.reached([lucky, {"wer": 0.0, "confirm_wer": 0.1}])
    assert not target.screened({"wer": 0.3, "confirm_wer": 0.1})


def test_training_confirms_its_target_on_more_utterances_before_it_stops(tmp_path, embedded_corpus):
    # the screen (1 utterance) meets a target any synthesis meets: the confirmation on 2 utterances
    # runs, meets it too, and the run stops at that first validation
    met = train(tacotron(), embedded_corpus, tmp_path / "met", options(
        40, val_every=2, val_utterances=1, until=(("mel_l1_dtw", 1e9),), until_confirm=2))
    [row] = read_jsonl(tmp_path / "met" / "val.jsonl")
    assert met.steps == 2 and met.reached_target is True and 0 < row["confirm_mel_l1_dtw"] < 1e9
    assert json.loads((tmp_path / "met" / "result.json").read_text())["target"]["confirm"] == 2
    # a screen that never meets the target never pays for a confirmation
    train(tacotron(), embedded_corpus, tmp_path / "never", options(
        4, val_every=2, val_utterances=1, until=(("mel_l1_dtw", -1.0),), until_confirm=2))
    assert not any("confirm_mel_l1_dtw" in r for r in read_jsonl(tmp_path / "never" / "val.jsonl"))
    with pytest.raises(ValueError, match="must exceed val_utterances"):
        options(4, val_every=2, val_utterances=2, until=(("wer", 0.2),), until_confirm=2)
    with pytest.raises(ValueError, match="set until"):
        options(4, val_every=2, val_utterances=1, until_confirm=2)


def test_training_stops_at_the_quality_target_and_a_resume_does_not_extend_it(tmp_path, embedded_corpus):
    # any synthesis has a finite mel L1, so the target is met at every validation: the run stops at
    # the second validation (consecutive=2), long before its step cap
    until = options(40, val_every=2, val_utterances=1, until=(("mel_l1_dtw", 1e9),), until_consecutive=2)
    first = train(tacotron(), embedded_corpus, tmp_path, until)
    assert first.state == "finished" and first.steps == 4 and first.reached_target is True
    assert [json.loads(line)["step"] for line in (tmp_path / "val.jsonl").read_text().splitlines()] == [2, 4]
    assert json.loads((tmp_path / "result.json").read_text())["target"]["reached"] is True
    assert train(tacotron(), embedded_corpus, tmp_path, until).steps == 4  # reached: nothing more to train
    # a target never met leaves the cap to end the run, and says so
    never = train(tacotron(), embedded_corpus, tmp_path / "never",
                  options(4, val_every=2, val_utterances=1, until=(("mel_l1_dtw", -1.0),)))
    assert never.steps == 4 and never.reached_target is False
    with pytest.raises(ValueError, match="needs validation"):
        options(4, until=(("wer", 0.2),))


def test_validation_hears_the_teacher_forced_output_beside_the_free_running_one(embedded_corpus):
    """With WER scored, an autoregressive system's teacher-forced output (recording-length) is
    vocoded and scored too, as tf_wer; a system without one (Glow-TTS) gets no tf_wer."""
    from ttsbench.audio import read_mono
    from ttsbench.metrics.quality import score
    from ttsbench.train import SPLIT_SEED, collate, load_model_examples, pad_values, validate

    utterance = embedded_corpus.split(seed=SPLIT_SEED)["val"][0]
    model = tacotron().eval()
    examples = load_model_examples(model, [utterance], progress=False)
    result = validate(model, examples, pad_values(model), torch.device("cpu"), [utterance.audio_path], ["wer"])
    batch = collate(examples, model.frame_multiple(), pad_values(model))
    [alignment] = model.alignment(batch)
    forced = alignment.teacher_forced
    assert forced is not None and forced.num_frames == examples[0].num_frames  # the recording's length
    waveform = vocoders.for_model(vocoders.DEFAULT, model).vocode(forced)
    expected = score(read_mono(utterance.audio_path, waveform.sample_rate)[0], waveform.audio, waveform.sample_rate,
                     utterance.text, ["wer"]).values["wer"]
    assert result.metrics["tf_wer"] == pytest.approx(expected) and "wer" in result.metrics

    glow = models.build("glow-tts", models.config_for("glow-tts", "tiny"), seed=0).eval()
    glow_examples = load_model_examples(glow, [utterance], progress=False)
    plain = validate(glow, glow_examples, pad_values(glow), torch.device("cpu"), [utterance.audio_path], ["wer"])
    assert "wer" in plain.metrics and "tf_wer" not in plain.metrics
