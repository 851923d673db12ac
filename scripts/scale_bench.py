"""Measure the data path at LJSpeech's utterance count (issue #18's figures) into a results file.

On a corpus written by `scripts/scale_corpus.py`, each step a fresh process with its own feature
cache, so nothing is warm that a user's first run would not have warm (but the audio is read
into the page cache before each run, so that the runs compare computing, not disk reads, and the
disk is synced, so that no run pays for the writes and deletions of the one before):

1. `ttsbench data prepare` with 1 worker and with 2 workers (fresh caches), `--repeats` times each,
   alternating which goes first: wall seconds, medians and their ratio, and the ratio within each
   back-to-back pair with its median (drift of the host between pairs cancels in it);
2. the same `data prepare` again on the 2-worker cache: everything found cached;
3. a tacotron-gradual job (`ttsbench train`, 1 step, 1 thread) on that warm cache: peak resident
   memory (of the job's process tree) and seconds from launch to the end of the first step.

    python scripts/scale_bench.py CORPUS [--systems tacotron-gradual] [--out runs/scale/scale_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import ttsbench

TTSBENCH = [sys.executable, "-m", "ttsbench"]


def run_measured(command: list[str], cache: Path) -> dict[str, Any]:
    """Run one command with its own cache; wall seconds, peak RSS (MB) and exit status."""
    env = {**os.environ, "TTSBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    launched = time.time()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output}")
    return {"command": " ".join(command[2:]), "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "launched": launched, "output": output.strip()[-400:]}


def read_audio_once(corpus: Path) -> None:
    """Bring every clip into the OS page cache, so that each timed run reads from memory, not
    from the disk: otherwise the first run pays for reading the corpus and the next ones don't."""
    for path in (corpus / "wavs").iterdir():
        path.read_bytes()


def prepare(corpus: Path, systems: str, workers: int, cache: Path) -> dict[str, Any]:
    read_audio_once(corpus)
    os.sync()  # the last run's 2.6 GB of writes and the deletion of its cache end before this one starts
    return run_measured([*TTSBENCH, "data", "prepare", str(corpus), "--systems", systems, "--workers", str(workers),
                         "--quiet"], cache)


def first_step(corpus: Path, cache: Path, work: Path) -> dict[str, Any]:
    """A tacotron-gradual job on a warm cache: its memory, and when its first step ended."""
    out = work / "tacotron-job"
    shutil.rmtree(out, ignore_errors=True)
    result = run_measured([*TTSBENCH, "train", "tacotron-gradual", "--corpus", str(corpus), "--steps", "1",
                           "--threads", "1", "--val-every", "0", "--quiet", "--out", str(out)], cache)
    result["first_step_seconds"] = round((out / "log.jsonl").stat().st_mtime - result["launched"], 2)
    return result


def prepare_pairs(corpus: Path, systems: str, work: Path, repeats: int) -> dict[int, list[dict[str, Any]]]:
    """`repeats` runs each with 1 and 2 workers from an empty cache, alternating which goes
    first; the last 2-worker cache is kept (work/cache-2-workers) for the cached run and the job."""
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for repeat in range(repeats):
        for workers in (1, 2) if repeat % 2 == 0 else (2, 1):
            cache = work / f"cache-{workers}-workers"
            shutil.rmtree(cache, ignore_errors=True)
            runs[workers].append(prepare(corpus, systems, workers, cache))
    shutil.rmtree(work / "cache-1-workers", ignore_errors=True)
    return runs


def measure(corpus: Path, systems: str, work: Path, repeats: int) -> dict[str, Any]:
    runs = prepare_pairs(corpus, systems, work, repeats)
    medians = {n: statistics.median(run["seconds"] for run in runs[n]) for n in runs}
    pairs = [round(one["seconds"] / two["seconds"], 3) for one, two in zip(runs[1], runs[2])]
    parallel_cache = work / "cache-2-workers"
    again = prepare(corpus, systems, 2, parallel_cache)
    job = first_step(corpus, parallel_cache, work)
    return {
        "corpus": str(corpus), "utterances": sum(1 for line in (corpus / "metadata.csv").open() if line.strip()),
        "systems": systems.split(","), "repeats": repeats, "prepare_1_worker": runs[1], "prepare_2_workers": runs[2],
        "median_seconds_1_worker": medians[1], "median_seconds_2_workers": medians[2],
        "speedup_2_workers": round(medians[1] / medians[2], 3), "speedup_per_pair": pairs,
        "speedup_pairs_median": statistics.median(pairs), "prepare_cached": again, "tacotron_job": job,
        "environment": {"ttsbench": ttsbench.__version__, "torch": torch.__version__, "python": platform.python_version(),
                        "cpu_count": os.cpu_count(), "platform": platform.platform()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="an LJSpeech-1.1 folder (scripts/scale_corpus.py writes one)")
    parser.add_argument("--systems", default="tacotron-gradual", help="systems whose features are prepared")
    parser.add_argument("--out", type=Path, default=Path("runs/scale/scale_bench.json"), help="results file")
    parser.add_argument("--work", type=Path, help="scratch folder for the caches (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="runs with each worker count (default 3)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ttsbench-scale-"))
    results = measure(args.corpus.resolve(), args.systems, work, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", "utf-8")
    job = results["tacotron_job"]
    pairs = results["speedup_per_pair"]
    print(f"prepare (median of {args.repeats}): 1 worker {results['median_seconds_1_worker']} s, 2 workers "
          f"{results['median_seconds_2_workers']} s ({results['speedup_2_workers']}x; per back-to-back pair "
          f"{results['speedup_pairs_median']}x, {min(pairs)}-{max(pairs)}), cached again "
          f"{results['prepare_cached']['seconds']} s; tacotron job: peak RSS {job['peak_rss_mb']} MB, first step "
          f"{job['first_step_seconds']} s after launch -> {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
