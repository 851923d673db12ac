"""`ttsbench data check|prepare|stats` and `ttsbench corpus make`: corpora in and out."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ttsbench import models
from ttsbench.data import check_corpus
from ttsbench.featurecache import default_cache_dir
from ttsbench.errors import OptionError
from ttsbench.prepare import Workers, prepare_corpus
from ttsbench.synthetic import DEFAULT_COUNTS, CorpusSpec, make_corpus
from ttsbench.text import TextProcessor


def cmd_check(args: argparse.Namespace) -> int:
    corpus, problems = check_corpus(args.path)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {corpus.root}", file=sys.stderr)
        return 2
    rates = Counter(u.sample_rate for u in corpus.utterances)
    total = sum(u.duration for u in corpus.utterances)
    print(f"corpus: {corpus.root}")
    print(f"utterances: {len(corpus)}")
    print(f"total duration: {total:.1f} s ({total / 3600:.2f} h)")
    print("sample rates: " + ", ".join(f"{sr} Hz x {n}" for sr, n in sorted(rates.items())))
    print(f"split: {'standard LJSpeech' if corpus.is_full_ljspeech else 'seeded by count'}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    systems = args.systems.split(",") if args.systems else models.names()
    configs = [(system, models.config_for(system, args.preset)) for system in systems]
    with Workers(args.workers, not args.quiet) as pool:
        corpus, summary = prepare_corpus(args.path, models.feature_requests(configs), pool)
    print(f"{corpus.name}: {summary} -> {default_cache_dir()}")
    return 0


def _describe(name: str, values: Sequence[float], unit: str) -> str:
    arr = np.asarray(values, dtype=float)
    q = np.percentile(arr, [0, 50, 100])
    return f"{name}: min {q[0]:.2f} {unit}, median {q[1]:.2f} {unit}, max {q[2]:.2f} {unit}, mean {arr.mean():.2f} {unit}"


def cmd_stats(args: argparse.Namespace) -> int:
    corpus, problems = check_corpus(args.path)
    if problems:
        for problem in problems:
            print(problem)
        return 2
    processor = TextProcessor()
    cleaned = [processor.clean(u.text) for u in corpus.utterances]
    print(f"corpus: {corpus.root} ({len(corpus)} utterances)")
    print(_describe("duration", [u.duration for u in corpus.utterances], "s"))
    print(_describe("text length", [len(c) for c in cleaned], "chars"))
    print(_describe("speaking rate", [len(c) / u.duration for c, u in zip(cleaned, corpus.utterances)], "chars/s"))
    chars = Counter("".join(cleaned))
    print("characters (cleaned, by count): " + " ".join(f"{c!r}:{n}" for c, n in chars.most_common()))
    return 0


def cmd_corpus_make(args: argparse.Namespace) -> int:
    try:
        spec = CorpusSpec(args.kind, args.count or DEFAULT_COUNTS[args.kind], args.seed, args.min_chars, args.max_chars)
    except ValueError as err:
        raise OptionError(str(err)) from None
    started = time.perf_counter()
    out = make_corpus(spec, Path(args.out), progress=not args.quiet)
    corpus, problems = check_corpus(out)
    print(f"{args.kind}: {len(corpus)} utterances, {sum(u.duration for u in corpus.utterances) / 60:.1f} min of speech "
          f"-> {out} ({time.perf_counter() - started:.0f} s; manifest.json says how it was made)")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2 if problems else 0
