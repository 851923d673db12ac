"""`ttsbench run`, `ttsbench plan` and `ttsbench report`: suites and their run folders."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ttsbench.errors import UserError
from ttsbench.plan import TRY_BATCH, TRY_STEPS, corpus_description, plan_jobs, plan_lines, try_suite
from ttsbench.report import build_report
from ttsbench.runner import run_suite
from ttsbench.suite import load_suite
from ttsbench.train import resolve_device


def cmd_plan(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    corpus = corpus_description(suite)
    for line in plan_lines(suite, plan_jobs(suite, args.out), corpus):
        print(line)
    if not args.try_jobs:
        return 0
    print(f"\ntrying each variant on {resolve_device(args.device)} ({TRY_STEPS} training steps on a batch of "
          f"{TRY_BATCH}, one synthesis):", flush=True)
    started = time.perf_counter()
    outcomes = try_suite(suite, args.device, lambda line: print(line, flush=True))
    failed = [o.variant for o in outcomes if o.error]
    print(f"tried {len(outcomes)} variants in {time.perf_counter() - started:.0f} s: "
          + (f"{len(failed)} would fail: {', '.join(failed)}" if failed else "none would fail"))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.plan:
        return cmd_plan(argparse.Namespace(suite=args.suite, out=args.out, try_jobs=args.try_jobs, device="auto"))
    if args.try_jobs:
        raise UserError("--try goes with --plan (or use `ttsbench plan SUITE --try`)")
    if not args.out:
        raise UserError("--out is required: the run folder (results.jsonl, jobs.json, jobs/JOB/)")
    suite = load_suite(args.suite)
    spec = suite.executor
    if args.executor:
        spec = replace(spec, type=args.executor)
    if args.address:
        spec = replace(spec, address=args.address)
    if args.parallel is not None:
        spec = replace(spec, parallel=args.parallel)
    if args.retries is not None:
        spec = replace(spec, retries=args.retries)
    summary = run_suite(suite, args.out, spec, progress=not args.quiet, skip_damaged=args.skip_damaged)
    counts = Counter(summary.states.values())
    print(f"done: {summary.total} jobs, {summary.skipped} skipped as already done, "
          + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + f"; results in {args.out}")
    if summary.failed:
        print(f"failed jobs (see {args.out}/jobs.json): {', '.join(summary.failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    out = args.out or str(Path("reports") / Path(args.run).resolve().name)
    index = build_report(args.run, out, benchmarks=args.benchmarks, price_per_hour=args.price_per_hour,
                         readme=args.readme, skip_damaged=args.skip_damaged,
                         log=lambda line: print(line, file=sys.stderr))
    print(f"report: {index} (and results.csv beside it)")
    return 0
