"""End to end: `ttsbench run suites/smoke.yaml`, a SIGKILL and resume, and the HTML report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ttsbench import models
from ttsbench.folders import TrainFolder
from ttsbench.report import build_report
from ttsbench.results import RunStore

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"
SCREENSHOTS = ROOT / "reports" / "test-screenshots"


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttsbench", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run"
    done = run_cli("run", str(SMOKE), "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    # not a terminal: the progress display prints whole lines (a job's phases, validations, the suite's count)
    assert "\r" not in done.stdout and "glow-tts_seed0  training  step" in done.stdout, done.stdout
    assert "glow-tts_seed0  evaluating" in done.stdout and "smoke: 6/6 done, 0 running" in done.stdout
    return out


@pytest.fixture(scope="module")
def smoke_report(smoke_run, tmp_path_factory) -> Path:
    return build_report(smoke_run, tmp_path_factory.mktemp("report"))


def mid_training(job_folder: Path) -> bool:
    """Past its first checkpoint and still training (no result.json yet)."""
    folder = TrainFolder(job_folder)
    return folder.checkpoint.is_file() and not folder.result.is_file()


def row_keys(results: pd.DataFrame) -> list[tuple]:
    """What identifies a row across runs (values and timings differ run to run)."""
    frame = results[["variant", "seed", "metric", "step", "item"]].astype(object).fillna("").astype(str)
    return [tuple(r) for r in frame.itertuples(index=False)]


def test_smoke_suite_runs_every_system(smoke_run):
    store = RunStore(smoke_run)
    jobs = store.jobs()
    assert {info["system"] for info in jobs.values()} == set(models.names()) | {"recording"}
    assert all(info["state"] == "finished" for info in jobs.values()), jobs
    results = store.results()
    keys = row_keys(results)
    assert len(keys) == len(set(keys)), "duplicate rows"
    for system in models.names():
        mine = results[results["system"] == system]
        assert set(mine["step"].dropna()) >= {2.0, 4.0}  # validation points at the suite's interval
        assert {"val/mel_l1_dtw", "eval/mcd", "rtf/total", "train/steps_per_second", "parameters"} <= set(mine["metric"])
        assert mine.loc[mine["metric"] == "train/steps", "value"].iloc[0] == 4
        assert set(mine["vocoder"]) == {"griffin-lim" if system == "dc-tts" else "hifigan-universal"}, system
    for vocoder in ("griffin-lim", "hifigan-universal"):  # one ceiling per vocoder the systems are heard through
        ceiling = results[(results["variant"] == f"ceiling: {vocoder}") & (results["metric"] == "eval/pesq")]
        assert set(ceiling["vocoder"]) == {vocoder}
        assert 2.5 < ceiling["value"].iloc[0] < 4.6  # a real recording's copy: degraded, not destroyed


def test_plan_shows_the_jobs_done_in_a_run_folder(smoke_run):
    planned = run_cli("plan", str(SMOKE), "--out", str(smoke_run), timeout=300)
    assert planned.returncode == 0, planned.stderr
    rows = [line.split() for line in planned.stdout.splitlines() if "_seed0 " in line]
    assert len(rows) == 5 and all(row[-1] == "finished" for row in rows), planned.stdout
    assert "5 training jobs, 5 done, 0 to run" in planned.stdout


def test_rerun_skips_finished_jobs(smoke_run):
    before = RunStore(smoke_run).results_path.read_bytes()
    again = run_cli("run", str(SMOKE), "--out", str(smoke_run), "--quiet", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "6 already done, 0 to run" in again.stdout
    assert RunStore(smoke_run).results_path.read_bytes() == before


def test_sigkill_mid_job_then_resume_loses_and_duplicates_nothing(smoke_run, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "ttsbench", "run", str(SMOKE), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(out)
    killed_job = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None:
            done = store.jobs() if store.jobs_path.is_file() else {}
            # a job past its first checkpoint but still training (no result.json yet), after one job landed
            training = [d.name for d in (out / "jobs").glob("*") if mid_training(d)] if done else []
            if training:
                killed_job = training[0]
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert killed_job, "never caught a job mid-training"
    assert killed_job not in store.jobs()

    resumed = run_cli("run", str(SMOKE), "--out", str(out), "--quiet", timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    attempts = (out / "jobs" / killed_job / "attempts.jsonl").read_text().splitlines()
    assert len(attempts) == 2  # the killed attempt and the resumed one
    log_steps = [json.loads(line)["step"] for line in (out / "jobs" / killed_job / "log.jsonl").read_text().splitlines()]
    assert log_steps == sorted(set(log_steps)), "the resumed training repeated or lost logged steps"

    uninterrupted, recovered = row_keys(RunStore(smoke_run).results()), row_keys(store.results())
    assert len(recovered) == len(set(recovered)), "duplicate rows after resume"
    assert set(recovered) == set(uninterrupted)


def test_report_has_every_section_and_system(smoke_report):
    html = smoke_report.read_text("utf-8")
    for section in ("summary", "convergence", "speed", "alignment", "samples", "hard", "benchmarks", "cost", "jobs",
                    "environment"):
        assert f'<section id="{section}">' in html
    for system in models.names():
        assert f'<td class="name">{system}</td>' in html
    assert html.count("data:audio/wav;base64,") == 3 + len(models.names())  # recording, 2 ceilings, each system
    assert "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained
    table = pd.read_csv(smoke_report.parent / "results.csv")
    assert set(table["system"]) == set(models.names()) | {"recording"}


def test_user_text_is_escaped(smoke_run, tmp_path):
    """A transcript or description carrying markup is shown as text, never run as script."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("results.jsonl", "jobs.json", "run.json", "environment.json"):
        shutil.copy(smoke_run / name, run / name)
    suite = json.loads((smoke_run / "suite.json").read_text())
    suite["description"] = "<b>bold</b> & <img src=x onerror=alert(2)>"
    (run / "suite.json").write_text(json.dumps(suite))
    shutil.copytree(smoke_run / "jobs" / "reference" / "samples", run / "jobs" / "reference" / "samples")
    for text in (run / "jobs" / "reference" / "samples").glob("*.txt"):
        text.write_text("Printing <script>alert(1)</script> in the only sense.")
    html = build_report(run, tmp_path / "report").read_text("utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;img src=x onerror=alert(2)&gt;" in html
    assert "<img src=x" not in html


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(page: Path, screenshot: Path) -> str:
    """Headless Chromium renders `page` and saves a screenshot; returns its log (console lines included)."""
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", "--window-size=1300,2400", f"--screenshot={screenshot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert screenshot.is_file(), done.stderr[-2000:]
    return done.stdout + done.stderr


def console_messages(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium); "
                    "the report is not checked in a browser")
def test_report_renders_in_headless_chromium_without_console_errors(smoke_report, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert console_messages(render(broken, tmp_path / "broken.png")), "the console check cannot see errors"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "smoke-report.png"
    log = render(smoke_report, shot)
    assert console_messages(log) == []
    assert shot.stat().st_size > 50_000  # a rendered page with tables and plots, not a blank canvas


BROKEN_ENTRY = """
  # durations read from a folder that does not exist: this job raises on its first batch
  - system: fastspeech2-sniper
    variant: fs2-broken
    set: {duration_source: file, durations_dir: /nonexistent/durations, max_inference_frames: 300}
"""


def suite_with_broken_job(tmp_path: Path, executor: str, keep_systems: bool) -> Path:
    text = SMOKE.read_text("utf-8")
    head, systems = text.split("systems:\n", 1)
    body = (systems if keep_systems else "") + BROKEN_ENTRY
    path = tmp_path / "suite.yaml"
    path.write_text(head + f"executor: {{type: {executor}, retries: 1, parallel: 2, cpus_per_job: 1}}\n"
                    + "systems:\n" + body, "utf-8")
    return path


def test_local_executor_retries_a_failing_job_then_records_it_and_goes_on(tmp_path):
    out = tmp_path / "run"
    done = run_cli("run", str(suite_with_broken_job(tmp_path, "local", keep_systems=False)), "--out", str(out),
                   "--quiet", "--parallel", "1", timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    jobs = RunStore(out).jobs()
    assert jobs["fs2-broken_seed0"]["state"] == "failed"
    assert jobs["fs2-broken_seed0"]["attempts"] == 2
    assert "/nonexistent/durations" in jobs["fs2-broken_seed0"]["error"]
    assert jobs["reference"]["state"] == "finished"  # the other job of the suite still ran
    assert "attempt 1 failed, retrying" in done.stdout


def slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout.split()
    return any(state in ("idle", "mixed", "allocated") for state in states)


needs_slurm = pytest.mark.skipif(not slurm_is_up(), reason="no Slurm running here (sudo scripts/local_slurm.sh "
                                 "install && sudo scripts/local_slurm.sh start)")


REMOTE_PACKAGES = {"ray": ("ray", "Ray is not installed (pip install 'ttsbench[ray]')"),
                   "slurm": ("submitit", "submitit is not installed (pip install 'ttsbench[slurm]')")}


@pytest.mark.parametrize("executor", ["ray", pytest.param("slurm", marks=needs_slurm)])
def test_remote_executor_matches_local_rows_and_records_a_failed_job(executor, smoke_run, tmp_path):
    pytest.importorskip(REMOTE_PACKAGES[executor][0], reason=REMOTE_PACKAGES[executor][1])
    out = tmp_path / f"{executor}-run"
    done = run_cli("run", str(suite_with_broken_job(tmp_path, executor, keep_systems=True)), "--out", str(out),
                   "--quiet", timeout=1200)
    assert done.returncode == 1, done.stdout + done.stderr
    jobs = RunStore(out).jobs()
    assert jobs["fs2-broken_seed0"]["state"] == "failed"
    assert jobs["fs2-broken_seed0"]["attempts"] == 2  # tried, retried once, then recorded
    assert "/nonexistent/durations" in jobs["fs2-broken_seed0"]["error"]
    assert all(info["state"] == "finished" for job, info in jobs.items() if job != "fs2-broken_seed0")
    rows = row_keys(RunStore(out).results())
    assert len(rows) == len(set(rows))
    assert set(rows) == set(row_keys(RunStore(smoke_run).results()))


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_ray_on_two_nodes_matches_local_rows_and_survives_a_killed_raylet(smoke_run, tmp_path):
    """Two raylets of one CPU each (a job needs one), the run folder shared: jobs that overlap in
    time ran on different nodes. The worker node is killed while one of its jobs trains: Ray
    retries that job on the head node, which resumes it from its checkpoint."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ttsbench[ray]'); the Ray executor is untested")
    psutil = pytest.importorskip("psutil")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    worker_raylet = worker.all_processes["raylet"][0].process.pid
    suite = tmp_path / "suite.yaml"
    suite.write_text(SMOKE.read_text("utf-8") + "executor: {type: ray, retries: 1, cpus_per_job: 1}\n", "utf-8")
    out = tmp_path / "ray2"
    command = [sys.executable, "-m", "ttsbench", "run", str(suite), "--out", str(out), "--quiet", "--address",
               cluster.address]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 600
        while killed is None and time.monotonic() < deadline and driver.poll() is None:
            killed = _training_under(out, worker_raylet, psutil)
            time.sleep(0.05)
        if killed:
            cluster.remove_node(worker, allow_graceful=False)
        output = driver.communicate(timeout=900)[0]
    finally:
        driver.kill()
        cluster.shutdown()
    assert killed, "never caught a job training on the worker node"
    assert driver.returncode == 0, output
    assert len((out / "jobs" / killed / "attempts.jsonl").read_text().splitlines()) == 2  # killed, then retried
    spans = [_span(folder) for folder in (out / "jobs").iterdir()]
    assert any(_overlap(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]), "no two jobs ran at once"
    rows = row_keys(RunStore(out).results())
    assert len(rows) == len(set(rows)), "duplicate rows after the retry"
    assert set(rows) == set(row_keys(RunStore(smoke_run).results()))


def _training_under(out: Path, raylet: int, psutil) -> str | None:
    """A job past its first checkpoint, still training, in a worker process of that raylet."""
    for folder in (out / "jobs").glob("*_seed0"):
        if not mid_training(folder):
            continue
        pid = json.loads((folder / "attempts.jsonl").read_text().splitlines()[-1])["pid"]
        try:
            if raylet in [p.pid for p in psutil.Process(pid).parents()]:
                return folder.name
        except psutil.Error:
            continue
    return None


def _span(folder: Path) -> tuple[float, float]:
    """A job's first start and the moment it last wrote its progress."""
    started = json.loads((folder / "attempts.jsonl").read_text().splitlines()[0])["started"]
    return started, (folder / "progress.json").stat().st_mtime


@needs_slurm
def test_scancel_mid_job_then_rerun_resumes_from_the_checkpoint(smoke_run, tmp_path):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'ttsbench[slurm]')")
    out = tmp_path / "cancelled"
    command = [sys.executable, "-m", "ttsbench", "run", str(SMOKE), "--out", str(out), "--quiet", "--executor", "slurm"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cancelled = None
    deadline = time.monotonic() + 600
    while cancelled is None and time.monotonic() < deadline and driver.poll() is None:
        training = [d.name for d in (out / "jobs").glob("*_seed0") if mid_training(d)]
        for job in training:
            ids = subprocess.run(["squeue", "-h", "-n", f"ttsbench-{job}", "-o", "%i"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
            if ids:
                subprocess.run(["scancel", ids[0]], check=True, timeout=30)
                cancelled = job
                break
        time.sleep(0.05)
    output = driver.communicate(timeout=900)[0]
    assert cancelled, "never caught a job mid-training"
    assert driver.returncode == 1, output
    assert RunStore(out).jobs()[cancelled]["state"] == "failed"
    assert "ended without a result (cancelled" in RunStore(out).jobs()[cancelled]["error"]

    resumed = run_cli("run", str(SMOKE), "--out", str(out), "--quiet", "--executor", "slurm", timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "5 already done, 1 to run" in resumed.stdout
    folder = out / "jobs" / cancelled
    assert len((folder / "attempts.jsonl").read_text().splitlines()) == 2  # cancelled, then resumed
    log_steps = [json.loads(line)["step"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert log_steps == sorted(set(log_steps)) == [0, 1, 2, 3], "the resumed training repeated or lost steps"
    recovered = row_keys(RunStore(out).results())
    assert len(recovered) == len(set(recovered)), "duplicate rows after resume"
    assert set(recovered) == set(row_keys(RunStore(smoke_run).results()))


REQUEUE_SUITE = """\
name: requeue
corpus: embedded
seeds: [0]
device: cpu
threads: 1
budget: {steps: 80}
log_every: 1
checkpoint_every: 10
validation: {every: 40, utterances: 1}
evaluation: {utterances: 1, metrics: [mcd], rtf_sentences: 1, rtf_repeats: 1, hard_sentences: 0, audio_samples: 0}
executor: {type: slurm}
systems:
  - {system: glow-tts, set: {max_inference_frames: 300}}
"""


@needs_slurm
def test_a_requeued_slurm_job_resumes_from_its_checkpoint(tmp_path):
    """What preemption with requeue does: Slurm stops the job and starts it again; the driver
    waits it out and the job goes on from its last checkpoint, each step trained once."""
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'ttsbench[slurm]')")
    suite, out = tmp_path / "requeue.yaml", tmp_path / "run"
    suite.write_text(REQUEUE_SUITE, "utf-8")
    driver = subprocess.Popen([sys.executable, "-m", "ttsbench", "run", str(suite), "--out", str(out), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder, requeued = out / "jobs" / "glow-tts_seed0", False
    deadline = time.monotonic() + 600
    while not requeued and driver.poll() is None and time.monotonic() < deadline:
        if mid_training(folder):
            ids = subprocess.run(["squeue", "-h", "-n", "ttsbench-glow-tts_seed0", "-o", "%i"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
            requeued = bool(ids) and subprocess.run(["scontrol", "requeue", ids[0]], timeout=30).returncode == 0
        time.sleep(0.1)
    output = driver.communicate(timeout=600)[0]
    assert requeued, "never caught the job mid-training"
    assert driver.returncode == 0 and "glow-tts_seed0: finished" in output, output
    assert len((folder / "attempts.jsonl").read_text().splitlines()) == 2
    steps = [json.loads(line)["step"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(80))


def test_report_names_a_damaged_results_line_and_can_skip_it(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    lines = (run / "results.jsonl").read_text("utf-8").splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # a line cut in the middle, with rows after it
    (run / "results.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    refused = run_cli("report", str(run), "--out", str(tmp_path / "report"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"{run / 'results.jsonl'}:3: damaged row: not JSON" in refused.stderr
    skipped = run_cli("report", str(run), "--out", str(tmp_path / "report"), "--skip-damaged")
    assert skipped.returncode == 0, skipped.stderr
    assert f"left out: {run / 'results.jsonl'}:3: damaged row" in skipped.stderr
    assert (tmp_path / "report" / "index.html").is_file()
    torn = "\n".join(lines[:2] + lines[3:]) + "\n" + lines[2]  # the same cut as the last line: a torn write
    (run / "results.jsonl").write_text(torn, "utf-8")
    assert run_cli("report", str(run), "--out", str(tmp_path / "report")).returncode == 0
