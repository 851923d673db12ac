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


def _cmd_train(args: argparse.Namespace) -> int:
    from ttsbench import models
    from ttsbench.data import CorpusError, load_corpus
    from ttsbench.train import TrainingDiverged, TrainOptions, train

    try:
        cls = models.get(args.system)
        config = cls.Config.preset(args.preset).with_overrides(args.set or [])
        corpus = load_corpus(args.corpus)
    except CorpusError as err:
        print(err)
        return 2
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    model = models.build(args.system, config, seed=args.seed)
    options = TrainOptions(
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        log_every=args.log_every,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        progress=not args.quiet,
        threads=args.threads,
    )
    print(f"{args.system} ({args.preset}): {model.num_parameters():,} parameters, corpus {corpus.name}, out {args.out}")
    try:
        result = train(model, corpus, args.out, options)
    except TrainingDiverged as err:
        print(f"error: {args.system} {err}; the last good checkpoint is kept in {args.out}", file=sys.stderr)
        return 3
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rate = result.steps / result.seconds if result.seconds else float("nan")
    print(f"finished {result.steps} steps in {result.seconds:.1f} s of training ({rate:.2f} steps/s); "
          f"loss {result.last_losses.get('loss', float('nan')):.4f}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    import time

    from ttsbench.audio import save_audio
    from ttsbench.models import load_checkpoint
    from ttsbench.text import TextProcessor, UnknownCharactersError
    from ttsbench.train import resolve_device

    device = resolve_device(args.device)
    try:
        model, checkpoint = load_checkpoint(args.checkpoint, device)
        ids = TextProcessor().encode(args.text)
    except FileNotFoundError:
        print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    except UnknownCharactersError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        synthesis = model.infer(torch.tensor(ids, dtype=torch.long, device=device))
    acoustic = time.perf_counter() - started
    audio = synthesis.to_audio()
    config = synthesis.linear_audio_config or synthesis.audio_config
    save_audio(args.output, audio, config)
    seconds = len(audio) / config.sample_rate
    print(f"{args.output}: {seconds:.2f} s of audio from {checkpoint['system']} at step {checkpoint['step']}, "
          f"{synthesis.num_frames} frames, acoustic model {acoustic:.2f} s, "
          f"{'stopped by itself' if synthesis.stopped else 'CUT BY THE MAX-LENGTH GUARD'}")
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

    tr = sub.add_parser("train", help="train one system; re-running with the same --out resumes")
    tr.add_argument("system", help="a registered system (see `ttsbench list`)")
    tr.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    tr.add_argument("--corpus", default=EMBEDDED, help="LJSpeech-format folder, or 'embedded' (default)")
    tr.add_argument("--steps", type=int, default=500)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (YAML value)")
    tr.add_argument("--log-every", type=int, default=1)
    tr.add_argument("--val-every", type=int, default=100, help="validation interval in steps (0: never)")
    tr.add_argument("--checkpoint-every", type=int, default=100)
    tr.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.add_argument("--out", required=True, help="run folder (log.jsonl, val.jsonl, checkpoint.pt)")
    tr.set_defaults(func=_cmd_train)

    sy = sub.add_parser("synth", help="synthesise text with a checkpoint (Griffin-Lim vocoder)")
    sy.add_argument("checkpoint")
    sy.add_argument("text")
    sy.add_argument("-o", "--output", required=True, help="output .wav")
    sy.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    sy.set_defaults(func=_cmd_synth)
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
