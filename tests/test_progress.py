"""Watching runs: the status file a job writes, the suite display that reads it, TensorBoard events."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from ttsbench import models
from ttsbench.progress import SuiteDisplay, StatusFile, job_line, read_status
from ttsbench.tracking import TensorBoard, alignment_matrices, alignment_image
from ttsbench.train import TrainOptions, train


def test_status_file_holds_the_step_rate_budget_and_last_validation(tmp_path):
    path = tmp_path / "progress.json"
    status = StatusFile(path, steps=None, max_seconds=540.0, target=["wer"])
    assert read_status(path)["phase"] == "starting"
    status.on_step(0, 0.5, {"loss": 3.0}, {"r": 7.0, "lr": 1e-3})
    status.on_step(99, 10.5, {"loss": 2.0}, {"r": 7.0, "lr": 1e-3})  # within a second of the last write: kept
    status.on_validation({"step": 100, "seconds": 10.5, "wer": 0.75, "seconds/text2mel": 3.0}, {}, [])
    written = read_status(path)
    assert written["step"] == 100 and written["steps_per_second"] == pytest.approx(9.9)
    assert written["val"] == {"step": 100, "seconds": 10.5, "wer": 0.75} and written["values"] == {"r": 7.0}
    line = job_line("tacotron-gradual_seed0", written)
    assert line == "tacotron-gradual_seed0  training  step 100  9.9 step/s  0.2/9.0 min  r=7  val wer 0.75 @100"


def test_a_torn_or_missing_status_reads_as_none(tmp_path):
    assert read_status(tmp_path / "none.json") is None
    (tmp_path / "torn.json").write_text('{"phase": "tr')
    assert read_status(tmp_path / "torn.json") is None


def _write(path: Path, **status) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"updated": time.time(), **status}))


def test_plain_display_prints_a_line_per_start_validation_and_end_not_per_step(tmp_path):
    """Not a terminal (CI, `| tee`): whole lines, one job's news at a time, never a bar."""
    status_path = lambda job_id: tmp_path / job_id / "progress.json"  # noqa: E731
    out = io.StringIO()
    display = SuiteDisplay("cpu", ["a_seed0", "b_seed0", "old_seed0"], status_path, parallel=2, live=False, stream=out)
    _write(status_path("old_seed0"), phase="training", step=50, updated=display.began - 10)  # an earlier run's: not running
    _write(status_path("a_seed0"), phase="training", step=10, val={})
    _write(status_path("b_seed0"), phase="training", step=20, val={"step": 200, "wer": 1.0}, target=["wer"])
    display.poll()
    _write(status_path("a_seed0"), phase="training", step=11, val={})  # a step: no new line
    display.poll()
    _write(status_path("b_seed0"), phase="evaluating", step=400, val={"step": 400, "wer": 0.1}, target=["wer"])
    display.poll()
    display.ended("b_seed0")
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["a_seed0  training  step 10", "b_seed0  training  step 20  val wer 1 @200",
                         "b_seed0  evaluating  step 400  val wer 0.10 @400"]
    assert lines[3] == "cpu: 1/3 done, 1 running, 0:00 elapsed, ~0 min left"
    assert display.running() == ["a_seed0"] and "\r" not in out.getvalue()


def test_live_block_has_a_line_per_running_job_and_the_suite_line(tmp_path):
    status_path = lambda job_id: tmp_path / job_id / "progress.json"  # noqa: E731
    display = SuiteDisplay("cpu", ["a_seed0", "b_seed0", "c_seed0"], status_path, parallel=2, live=True,
                           stream=io.StringIO())
    _write(status_path("a_seed0"), phase="training", step=5)
    _write(status_path("b_seed0"), phase="evaluating", step=9)
    with display:
        display.poll()
        text = display.render().plain
    assert text.splitlines() == ["a_seed0  training  step 5", "b_seed0  evaluating  step 9",
                                 "cpu: 0/3 done, 2 running, 0:00 elapsed"]


def test_alignment_images_come_from_soft_maps_or_durations():
    soft = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 1.0]], dtype=np.float32)  # [T_text, T_steps]
    [(a, first), (b, path)] = alignment_matrices({"a": soft, "a/durations": np.array([1, 2]),
                                                  "b/durations": np.array([2, 0, 1])})
    assert (a, b) == ("a", "b") and first is not None
    assert path.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    image = alignment_image(soft)
    assert image[-1].tolist() == pytest.approx([0.9, 0.1, 0.0])  # the first token at the bottom


def test_tensorboard_events_hold_scalars_alignment_images_and_audio(tmp_path, embedded_corpus):
    """`train --tensorboard`: what `tensorboard --logdir` shows, read back from the event file."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    model = models.build("glow-tts", models.config_for("glow-tts", "tiny"), seed=0)
    options = TrainOptions(steps=4, val_every=2, val_utterances=1, progress=False, threads=1)
    train(model, embedded_corpus, tmp_path, options, [TensorBoard(tmp_path / "tensorboard")])
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"),
                                                size_guidance={"scalars": 0, "images": 0, "audio": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/mle_loss", "val/mel_l1_dtw"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/mel_l1_dtw")] == [2, 4]
    assert tags["images"] and all(t.startswith("alignment/") for t in tags["images"])
    assert tags["audio"] and events.Audio(tags["audio"][0])[0].sample_rate == 22050


def test_time_left_counts_jobs_not_started_and_what_running_ones_have_left(tmp_path, monkeypatch):
    display = SuiteDisplay("cpu", ["a", "b", "c", "d"], lambda j: tmp_path / j, parallel=2, live=False,
                           stream=io.StringIO())
    assert display.seconds_left() is None  # nothing finished yet: no estimate
    now = 1000.0
    monkeypatch.setattr(time, "time", lambda: now)
    display.jobs["a"].started, display.jobs["a"].ended, display.jobs["a"].status = 0.0, 600.0, {"step": 5}
    display.jobs["b"].started, display.jobs["b"].status = 800.0, {"step": 3}  # running for 200 s of a 600-s mean
    # c and d not started: 600 s each; b: 400 s left; over 2 lanes
    assert display.seconds_left() == pytest.approx((600 + 600 + 400) / 2)
