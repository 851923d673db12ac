"""`ttsbench plan`: the job matrix, caps and cost before a run, and `--try` naming every job that would fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ttsbench import cli, models
from ttsbench.audio import AudioConfig
from ttsbench.models import Synthesis
from ttsbench.plan import corpus_description, first_seconds, plan_jobs, plan_lines, try_suite
from ttsbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]

SUITE = """\
name: planned
corpus: embedded
seeds: [0, 1, 2]
device: cpu
budget: {minutes: 90, until: {wer: 0.2}, consecutive: 2}
validation: {every: 10, utterances: 1, metrics: [wer]}
evaluation: {utterances: 1, metrics: [mcd], rtf_sentences: 1, rtf_repeats: 1, hard_sentences: 0}
price_per_hour: 2.5
executor: {type: local, parallel: 2}
systems:
  - {system: glow-tts, set: {max_inference_frames: 200}}
  - {system: fastspeech2-sniper, set: {max_inference_frames: 200}, budget: {steps: 500}}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "planned.yaml"
    path.write_text(SUITE)
    return path


def test_plan_lists_every_job_its_budget_and_the_cost_of_the_time_caps(suite_file):
    suite = load_suite(suite_file)
    lines = plan_lines(suite, plan_jobs(suite, None), corpus_description(suite))
    text = "\n".join(lines)
    assert lines[1] == "corpus: embedded (24 LJSpeech clips shipped with ttsbench)"
    [row] = [" ".join(line.split()) for line in lines if line.startswith("glow-tts_seed2")]
    assert row.startswith("glow-tts_seed2 glow-tts tiny 2 until wer 0.2 (2x), at most 90 min") and row.endswith("pending")
    assert "500 steps" in text and text.count("pending") == 7  # the reference job and 6 training jobs
    confirmed = load_suite(_write(suite_file, SUITE.replace("consecutive: 2", "confirm: 20")))
    [row] = [" ".join(line.split()) for line in plan_lines(confirmed, plan_jobs(confirmed, None), "")
             if line.startswith("glow-tts_seed2")]
    assert "until wer 0.2 (confirmed on 20 utterances), at most 90 min" in row
    # 3 glow-tts jobs x 1.5 h; the step-budget jobs have no known time
    assert "at most 4.5 device-hours of training for the jobs to run" in text
    assert "$11.25 at $2.5/h; 2.2 h of wall time at 2 at a time" in text
    assert "3 jobs have a step budget only" in text


def test_plan_names_an_unset_corpus_variable_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("LJSPEECH", raising=False)
    code = cli.main(["plan", str(ROOT / "suites" / "ljspeech-gpu.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "names the environment variable LJSPEECH, which is not set" in err


def test_try_runs_every_variant_and_names_each_failure(suite_file, monkeypatch):
    """One variant failing (a stand-in for a shape error or CUDA OOM) does not hide the others."""
    built = models.build

    def build(system: str, config, seed: int = 0):
        model = built(system, config, seed=seed)
        if system == "fastspeech2-sniper":
            def broken(*args, **kwargs):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            model.training_step = broken
        return model

    monkeypatch.setattr(models, "build", build)
    said: list[str] = []
    outcomes = try_suite(load_suite(suite_file), "cpu", said.append)
    assert [o.variant for o in outcomes] == ["glow-tts", "fastspeech2-sniper"]  # one per variant, not per seed
    assert outcomes[0].error is None and outcomes[0].parameters > 0
    assert outcomes[1].error == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert said[1] == "  fastspeech2-sniper: FAILED: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_run_plan_trains_nothing(suite_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", str(suite_file), "--out", str(out), "--plan"]) == 0
    assert "glow-tts_seed0" in capsys.readouterr().out and not out.exists()


def test_try_vocodes_only_the_first_seconds_of_a_synthesis():
    """An untrained autoregressive model at a full preset runs to its guard: minutes of frames."""
    mel_config, linear_config = AudioConfig(), AudioConfig(hop_length=276, n_fft=2048, win_length=1102)
    synthesis = Synthesis(mel=np.zeros((5000, 80)), audio_config=mel_config, linear=np.zeros((20000, 1025)),
                          linear_audio_config=linear_config)
    cut = first_seconds(synthesis, 2.0)
    assert cut.mel.shape == (172, 80) and cut.linear.shape == (159, 1025)  # 2 s at hops of 256 and 276
    assert first_seconds(Synthesis(mel=np.zeros((50, 80)), audio_config=mel_config), 2.0).mel.shape == (50, 80)
