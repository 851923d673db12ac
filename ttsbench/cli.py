"""The `ttsbench` command line."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ttsbench.data import EMBEDDED, check_corpus
from ttsbench.text import TextProcessor


def _cmd_data_check(args: argparse.Namespace) -> int:
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


def _describe(name: str, values: Sequence[float], unit: str) -> str:
    arr = np.asarray(values, dtype=float)
    q = np.percentile(arr, [0, 50, 100])
    return f"{name}: min {q[0]:.2f} {unit}, median {q[1]:.2f} {unit}, max {q[2]:.2f} {unit}, mean {arr.mean():.2f} {unit}"


def _cmd_data_stats(args: argparse.Namespace) -> int:
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


def _cmd_list(args: argparse.Namespace) -> int:
    from ttsbench import models

    for name in models.names():
        print(f"{name}\t{models.describe(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttsbench", description="Benchmark TTS training recipes side by side.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect an LJSpeech-format corpus")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a corpus; exit 2 listing every problem")
    check.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    check.set_defaults(func=_cmd_data_check)
    stats = data_sub.add_parser("stats", help="durations, text lengths and characters")
    stats.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    stats.set_defaults(func=_cmd_data_stats)

    listing = sub.add_parser("list", help="the registered TTS systems, one per line")
    listing.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
