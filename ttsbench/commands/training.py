"""`ttsbench list` and `ttsbench train`: the registered systems, and training one of them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ttsbench import models
from ttsbench.folders import TrainFolder
from ttsbench.prepare import Workers, prepare_corpus
from ttsbench.tracking import TensorBoard, require_tensorboard
from ttsbench.train import TrainOptions, train


def cmd_list(args: argparse.Namespace) -> int:
    for name in models.names():
        print(f"{name}\t{models.describe(name)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = models.config_for(args.system, args.preset, args.set or [])
    if args.tensorboard:
        require_tensorboard()  # before the corpus is prepared, not after
    with Workers(progress=not args.quiet) as pool:
        corpus, _ = prepare_corpus(args.corpus, models.feature_requests([(args.system, config)]), pool)
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
    observers = [TensorBoard(TrainFolder(Path(args.out)).tensorboard)] if args.tensorboard else []
    result = train(model, corpus, args.out, options, observers)
    if result.state == "diverged":
        print(f"error: {args.system} {result.message}", file=sys.stderr)
        return 3
    rate = result.steps / result.seconds if result.seconds else float("nan")
    print(f"finished {result.steps} steps in {result.seconds:.1f} s of training ({rate:.2f} steps/s); "
          f"loss {result.last_losses.get('loss', float('nan')):.4f}")
    return 0
