"""Option values that both the command line and the suite files accept, kept apart from the
modules that act on them so that parsing a command line imports none of those (nor torch)."""

from __future__ import annotations

import typing
from typing import Literal

EXECUTOR_TYPES = ("local", "ray", "slurm")  # the keys of executors.EXECUTORS (that module checks it)
Preset = Literal["tiny", "full"]
PRESETS: tuple[str, ...] = typing.get_args(Preset)  # what suites and the CLI offer
DEVICES = ("cpu", "cuda", "auto")  # where a model may run ("auto": cuda when present)
EMBEDDED = "embedded"  # the corpus spec naming the 24 clips shipped in the package
CORPUS_KINDS = ("digits", "lj-text")  # what `ttsbench corpus make` generates (ttsbench.synthetic)
VOCODERS = ("griffin-lim", "hifigan-lj", "hifigan-universal")  # the keys of the vocoders registry (checked there)
DEFAULT_VOCODER = "hifigan-universal"  # for every system whose output is the default 80-bin log mel
FALLBACK_VOCODER = "griffin-lim"  # every system's own path (it takes any front end), and all runs had before
MAX_SEED = 2**32 - 1  # numpy seeds are 32-bit; suites and the command line refuse larger ones
TRACKERS = ("none", "tensorboard")  # what a suite's `tracking` may name (ttsbench.tracking)
