"""Peer benchmark driver: ttsbench's and coqui-tts's training step, alternately, one table.

Each comparison's two programs run one after the other in fresh processes, `--rounds` times,
the side that goes first swapping every round, so slow drift of the machine (heat, a neighbour)
falls on both sides alike. Every run is `ours_step.py` or `coqui_step.py` (5 timed steps after
1 warm-up by default, `--threads` torch threads, the same batch lengths). The results document
(`ttsbench.report.peer`) goes to OUT/peer_bench.json, the markdown table to OUT/peer_bench.md
and stdout.

    python peer/bench.py --coqui-python .venv-peer/bin/python --out runs/cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PEER = Path(__file__).resolve().parent
ROOT = PEER.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(PEER))
from timing import BATCH, FRAMES, TOKENS  # noqa: E402

from ttsbench.report.peer import PEER_RESULTS, Comparison, markdown_table, summarize  # noqa: E402

FASTSPEECH2_DIFFERENCES = (
    "ours: ESPnet/SNIPER FastSpeech2 (4+4 pre-LN FFT blocks, FFN 1536, 2 heads, attention dropout 0.2, "
    "5-layer postnet) with its jointly trained aligner; coqui: ForwardTTS FastSpeech2 (6+6 FFT blocks, "
    "FFN 1024, 1 head, no postnet) with use_aligner=True (its default), so both learn durations by "
    "aligner + MAS; both average pitch and energy per token"
)
COMPARISONS = (
    Comparison("glow-tts", "glow-tts", (), "glow-tts",
               "same architecture (the official Glow-TTS sizes); ours runs data-dependent ActNorm init "
               "before timing, coqui's is switched off"),
    Comparison("fastspeech2 dense", "fastspeech2-sniper", ("sparsity_variant=dense", "snip_batches=1"),
               "fastspeech2-sniper", FASTSPEECH2_DIFFERENCES),
    Comparison("fastspeech2 sniper", "fastspeech2-sniper", ("snip_batches=1",), "fastspeech2-sniper",
               FASTSPEECH2_DIFFERENCES + "; ours at SNIPER's step-0 sparsity (20 %), pruned weights "
               "still multiplied (dense kernels)"),
    Comparison("tacotron r=2", "tacotron-gradual", ("gradual_training=[[0,2,8]]",), "tacotron-gradual",
               "Tacotron v1 as Coqui builds it, both at r = 2"),
)


def run_json(command: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one step program and parse the JSON line it prints last (coqui also chats on stdout)."""
    done = subprocess.run(list(command), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def environments(threads: int) -> tuple[dict[str, str], dict[str, str]]:
    """(ours, coqui): the same thread settings; ours imports this checkout, coqui gets the stubs."""
    base = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    ours = {**base, "PYTHONPATH": str(ROOT)}
    coqui = {**base, "PYTHONPATH": str(PEER / "stubs")}
    return ours, coqui


def commit() -> str:
    """HEAD's hash, with "+dirty" when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_ours(args: argparse.Namespace, comparison: Comparison, env: dict[str, str]) -> dict[str, Any]:
    sets = [part for override in comparison.overrides for part in ("--set", override)]
    command = [args.ours_python, str(PEER / "ours_step.py"), comparison.system, "--variant", comparison.variant]
    return run_json(command + timing_options(args) + sets, env)


def run_coqui(args: argparse.Namespace, coqui_system: str, env: dict[str, str]) -> dict[str, Any]:
    command = [args.coqui_python, str(PEER / "coqui_step.py"), coqui_system]
    return run_json(command + timing_options(args), env)


def timing_options(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]


def measure(args: argparse.Namespace, comparisons: Sequence[Comparison]) -> tuple[dict, dict]:
    """Every round: for each coqui model, its ttsbench variants and it, the order swapped each round."""
    ours_env, coqui_env = environments(args.threads)
    ours: dict[str, list] = {c.variant: [] for c in comparisons}
    coqui: dict[str, list] = {c.coqui_system: [] for c in comparisons}
    for round_index in range(args.rounds):
        for coqui_system in coqui:
            jobs: list[tuple[list, Any]] = [
                (ours[c.variant], (run_ours, c, ours_env)) for c in comparisons if c.coqui_system == coqui_system
            ]
            theirs = (coqui[coqui_system], (run_coqui, coqui_system, coqui_env))
            jobs = jobs + [theirs] if round_index % 2 == 0 else [theirs] + jobs
            for into, (program, what, env) in jobs:
                into.append(program(args, what, env))
                log(args, into[-1])
    return ours, coqui


def log(args: argparse.Namespace, run: dict[str, Any]) -> None:
    if not args.quiet:
        print(f"  {run['side']:>9} {run['variant']:<20} median {run['median_s']:.3f} s", file=sys.stderr, flush=True)


def coqui_version(python: str) -> str:
    done = subprocess.run([python, "-c", "from importlib.metadata import version; print(version('coqui-tts'))"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coqui-python", required=True, help="python of the venv with coqui-tts")
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "peer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", action="append", default=[], help="a variant to run (repeatable; default all)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    comparisons = [c for c in COMPARISONS if not args.only or c.variant in args.only]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ours, coqui = measure(args, comparisons)
    settings = {
        "started": started, "commit": commit(), "threads": args.threads, "rounds": args.rounds,
        "steps": args.steps, "warmup": args.warmup, "batch": {"batch": BATCH, "tokens": TOKENS, "frames": FRAMES},
        "torch": {"ttsbench": next(iter(ours.values()))[0]["torch_version"],
                  "coqui-tts": next(iter(coqui.values()))[0]["torch_version"]},
        "coqui_tts_version": coqui_version(args.coqui_python),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    results = summarize(comparisons, ours, coqui, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / PEER_RESULTS).write_text(json.dumps(results, indent=1) + "\n", "utf-8")
    table = markdown_table(results)
    (args.out / "peer_bench.md").write_text(table + "\n", "utf-8")
    print(table)


if __name__ == "__main__":
    main()
