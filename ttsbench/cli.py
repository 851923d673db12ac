"""The `ttsbench` command line: its parser and the error boundary every command runs behind.

Each command's handler lives in `ttsbench.commands` and is named here as "module:function", so
parsing loads only what the options need, and a command imports only its own module.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ttsbench.cachedir import cache_root
from ttsbench.errors import UserError, first_line
from ttsbench.forkserver import start_early
from ttsbench.options import (
    CORPUS_KINDS,
    DEFAULT_VOCODER,
    DEVICES,
    EMBEDDED,
    EXECUTOR_TYPES,
    MAX_SEED,
    PRESETS,
    VOCODERS,
)


def _at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum (and <= maximum), so `--steps 0` is refused
    before any work."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum:,}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {number}")
        return number
    parse.__name__ = f"integer >= {minimum}"
    return parse


_positive, _non_negative = _at_least(1), _at_least(0)
_seed = _at_least(0, MAX_SEED)


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """`data check`, `data prepare`, `data stats` and `corpus make`: corpora in and out."""
    data = sub.add_parser("data", help="inspect an LJSpeech-format corpus")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a corpus; exit 2 listing every problem")
    check.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    check.set_defaults(handler="data:cmd_check")
    prepare = data_sub.add_parser("prepare", help="compute the features of every utterance ahead of training "
                                  "(process pool; resumable)")
    prepare.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    prepare.add_argument("--systems", help="comma-separated systems whose features to compute (default: all)")
    prepare.add_argument("--preset", choices=PRESETS, default="tiny", help="their preset (default tiny)")
    prepare.add_argument("--workers", type=_positive, help="processes (default: every core)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(handler="data:cmd_prepare", fork_server=True)
    stats = data_sub.add_parser("stats", help="durations, text lengths and characters")
    stats.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    stats.set_defaults(handler="data:cmd_stats")

    corpus = sub.add_parser("corpus", help="generate a synthetic corpus spoken by a Piper voice")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    make = corpus_sub.add_parser("make", help="write an LJSpeech-1.1 folder (resumable; texts fixed by --seed)")
    make.add_argument("kind", choices=CORPUS_KINDS, help="spoken digit strings, or LJSpeech sentences")
    make.add_argument("--out", required=True, help="the folder to write (a killed run continues there)")
    make.add_argument("--count", type=_positive, help="utterances in all (default 600)")
    make.add_argument("--seed", type=_seed, default=0, help="seeds the texts (default 0)")
    make.add_argument("--min-chars", type=_positive, default=20, help="lj-text: shortest sentence (default 20)")
    make.add_argument("--max-chars", type=_positive, default=90, help="lj-text: longest sentence (default 90)")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(handler="data:cmd_corpus_make")


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """`list` and `train`."""
    listing = sub.add_parser("list", help="the registered TTS systems, one per line")
    listing.set_defaults(handler="training:cmd_list")

    tr = sub.add_parser("train", help="train one system; re-running with the same --out resumes")
    tr.add_argument("system", help="a registered system (see `ttsbench list`)")
    tr.add_argument("--preset", choices=PRESETS, default="tiny")
    tr.add_argument("--corpus", default=EMBEDDED, help="LJSpeech-format folder, or 'embedded' (default)")
    tr.add_argument("--steps", type=_positive, default=500)
    tr.add_argument("--seed", type=_seed, default=0)
    tr.add_argument("--device", default="auto", choices=DEVICES)
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (YAML value)")
    tr.add_argument("--log-every", type=_positive, default=1)
    tr.add_argument("--val-every", type=_non_negative, default=100, help="validation interval in steps (0: never)")
    tr.add_argument("--checkpoint-every", type=_positive, default=100)
    tr.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.add_argument("--tensorboard", action="store_true",
                    help="also write TensorBoard events to OUT/tensorboard (needs ttsbench[tracking])")
    tr.add_argument("--out", required=True, help="run folder (log.jsonl, val.jsonl, checkpoint.pt)")
    tr.set_defaults(handler="training:cmd_train")


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """`synth`, `score` and `speed`: using and measuring a trained model."""
    sy = sub.add_parser("synth", help="synthesise text with a checkpoint, then a vocoder")
    sy.add_argument("checkpoint")
    sy.add_argument("text")
    sy.add_argument("-o", "--output", required=True, help="output .wav")
    sy.add_argument("--device", default="cpu", choices=DEVICES)
    sy.add_argument("--vocoder", default=DEFAULT_VOCODER, choices=VOCODERS,
                    help=f"default {DEFAULT_VOCODER}; a system whose mel it was not trained on uses Griffin-Lim")
    sy.set_defaults(handler="scoring:cmd_synth")

    vo = sub.add_parser("vocode", help="copy synthesis: each recording's own mel through a vocoder (its ceiling)")
    vo.add_argument("wavdir", help="folder of recordings (.wav/.flac)")
    vo.add_argument("-o", "--output", required=True, help="folder for the copies (same file names, .wav)")
    vo.add_argument("--vocoder", default=DEFAULT_VOCODER, choices=VOCODERS, help=f"default {DEFAULT_VOCODER}")
    vo.add_argument("--device", default="cpu", choices=DEVICES)
    vo.add_argument("--quiet", action="store_true", help="no progress bar")
    vo.set_defaults(handler="scoring:cmd_vocode")

    sc = sub.add_parser("score", help="score synthesised wavs against recordings matched by file name")
    sc.add_argument("--ref", required=True, help="folder of reference recordings (.wav/.flac)")
    sc.add_argument("--syn", required=True, help="folder of syntheses with the same file names")
    sc.add_argument("--text", help="LJSpeech-style metadata.csv (id|text|normalized_text) for wer/cer")
    sc.add_argument("--metrics", help="comma-separated names (default: all the inputs allow); "
                    "see ttsbench.metrics.quality.METRICS")
    sc.add_argument("--out", required=True, help="CSV: one row per utterance and metric, then mean/std rows")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(handler="scoring:cmd_score")

    sp = sub.add_parser("speed", help="real-time factor of a checkpoint over LJSpeech test sentences")
    sp.add_argument("checkpoint")
    sp.add_argument("--sentences", type=_positive, default=8, help="sentences spread from shortest to longest")
    sp.add_argument("--repeats", type=_positive, default=3, help="timed runs per sentence (median reported)")
    sp.add_argument("--warmup", type=_non_negative, default=1, help="untimed runs per sentence first")
    sp.add_argument("--device", default="cpu", choices=DEVICES)
    sp.add_argument("--vocoder", default=DEFAULT_VOCODER, choices=VOCODERS,
                    help=f"default {DEFAULT_VOCODER}; a system whose mel it was not trained on uses Griffin-Lim")
    sp.add_argument("--out", help="also write the table as CSV")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(handler="scoring:cmd_speed")


def _add_suite_commands(sub: argparse._SubParsersAction) -> None:
    """`run` and `report`: suites and their run folders."""
    ru = sub.add_parser("run", help="run a suite's job matrix; re-running the same command resumes")
    ru.add_argument("suite", help="suite YAML file (see suites/)")
    ru.add_argument("--out", help="run folder: results.jsonl, jobs.json, jobs/JOB/ (required unless --plan)")
    ru.add_argument("--executor", choices=EXECUTOR_TYPES, help="default: the suite's `executor.type` (local)")
    ru.add_argument("--address", help="Ray cluster address (auto, ray://HOST:10001); default: a local instance")
    ru.add_argument("--parallel", type=_positive, help="jobs at a time (default: the suite's, usually 1)")
    ru.add_argument("--retries", type=_non_negative, help="retries of a failed job before it is recorded as failed")
    ru.add_argument("--quiet", action="store_true", help="no progress bars")
    ru.add_argument("--skip-damaged", action="store_true", help="drop damaged lines of results.jsonl (each named) "
                    "and run their jobs again, instead of refusing the run folder")
    ru.add_argument("--plan", action="store_true", help="print the plan (as `ttsbench plan`) and train nothing")
    ru.add_argument("--try", dest="try_jobs", action="store_true", help="with --plan: also try every variant "
                    "(as `ttsbench plan --try`)")
    ru.set_defaults(handler="suites:cmd_run")

    pl = sub.add_parser("plan", help="validate a suite and print its job matrix, device-hours and cost; trains nothing")
    pl.add_argument("suite", help="suite YAML file (see suites/)")
    pl.add_argument("--out", help="run folder: show which jobs are done there")
    pl.add_argument("--try", dest="try_jobs", action="store_true", help="also build every variant's model at its "
                    "preset and run 2 training steps on a batch of two and one synthesis, here")
    pl.add_argument("--device", default="auto", choices=DEVICES, help="where --try runs (default: cuda when present)")
    pl.set_defaults(handler="suites:cmd_plan")

    rp = sub.add_parser("report", help="render a run folder as one self-contained HTML page plus results.csv")
    rp.add_argument("run", help="run folder written by `ttsbench run`")
    rp.add_argument("--out", help="output folder (default: reports/RUN_NAME)")
    rp.add_argument("--benchmarks", help="pytest-benchmark JSON (default: RUN/benchmarks.json when present)")
    rp.add_argument("--price-per-hour", type=float, help="USD per device-hour for the cost table "
                    "(default: the suite's price_per_hour)")
    rp.add_argument("--readme", help="also replace the results block of this README with the summary table")
    rp.add_argument("--skip-damaged", action="store_true", help="leave out damaged lines of results.jsonl "
                    "(each named) instead of refusing the run folder")
    rp.set_defaults(handler="suites:cmd_report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttsbench", description="Benchmark TTS training recipes side by side.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_model_commands(sub)
    _add_suite_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command behind the error boundary: an expected failure (`UserError`, or an OSError
    naming its path) is one `error:` line and exit 2; anything else is a bug, reported in one
    line with the file holding its traceback (shown in full with --debug), exit 1.

    The cyclic garbage collector skips the objects of torch's, librosa's and numba's ~3000
    modules: it is off while the command's module is imported (full collections set off by
    those imports took ~0.3 s and freed nothing), and they are frozen while the command runs (a
    full collection took ~150 ms: a feature pool starved while this process fed it no chunk),
    and again at exit (the interpreter's last collection took ~0.7 s). Every file this package
    writes is closed by then (written atomically, or in `with` blocks)."""
    atexit.unregister(gc.freeze)  # once per process, however often main runs in it
    atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as err:
        print(_error_text(str(err)), file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {_os_error_text(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the boundary: a bug, reported without a traceback
        if args.debug:
            raise
        where = _write_traceback(err)
        print(f"error: unexpected {type(err).__name__}: {first_line(err)} (a bug in ttsbench; "
              f"traceback in {where}, or re-run with --debug)", file=sys.stderr)
        return 1


def _run_command(args: argparse.Namespace) -> int:
    """Import the command's module with the collector off and run it on a frozen heap, its
    warnings shown as one `warning:` line each (with their source under --debug)."""
    if getattr(args, "fork_server", False):  # a command with a worker pool: its imports overlap ours
        start_early(args.workers)
    with _collector_off():
        command = handler(args.handler)
    with _frozen_heap(), _warning_lines(not args.debug):
        return int(command(args))


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Every object now alive out of the collector's reach for the block; a caller that froze
    objects itself keeps its freeze as it was, and one that did not (a test) gets its collector
    back whole."""
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    try:
        yield
    finally:
        if ours:
            gc.unfreeze()


@contextlib.contextmanager
def _warning_lines(plain: bool) -> Iterator[None]:
    """Warnings printed as `warning: MESSAGE` for the block when `plain` (not Python's
    `file:line: Category: message` and the source line, which mean nothing to a user)."""
    shown = warnings.formatwarning
    if plain:
        warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = shown


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """The cyclic collector off for the block, then as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def handler(name: str) -> Callable[[argparse.Namespace], int]:
    """The function a "module:function" name in `ttsbench.commands` stands for."""
    module, function = name.split(":")
    return getattr(importlib.import_module(f"ttsbench.commands.{module}"), function)


def _error_text(message: str) -> str:
    """One `error:` line, or the message as it is when it lists problems one per line."""
    return message if "\n" in message or message.startswith("error:") else f"error: {message}"


def _os_error_text(err: OSError) -> str:
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    reason = err.strerror or str(err)
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _write_traceback(err: BaseException) -> Path:
    """The traceback of an unexpected error, kept under the cache for a bug report (or in the
    temporary folder when the cache itself is the problem: unusable, unwritable, full)."""
    name = f"ttsbench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    for folder in (lambda: cache_root() / "crashes", lambda: Path(tempfile.gettempdir())):
        try:
            path = folder() / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            return path
        except (OSError, UserError):
            continue
    return Path("(nowhere: no writable folder)")


if __name__ == "__main__":
    sys.exit(main())
