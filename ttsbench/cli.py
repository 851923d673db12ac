"""The `ttsbench` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ttsbench import models
from ttsbench.audio import read_mono, save_audio
from ttsbench.data import AUDIO_SUFFIXES, EMBEDDED, cache_root, check_corpus, default_cache_dir
from ttsbench.errors import OptionError, UserError, first_line
from ttsbench.metrics.quality import METRICS, resolve_metrics, score, summarise, unheard
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.metrics.speed import length_spread_sentences, measure_rtf, summarise_rtf
from ttsbench.metrics.stats import Interval, mean_interval
from ttsbench.models import load_checkpoint
from ttsbench.models.base import DEVICES, PRESETS
from ttsbench.prepare import Workers, feature_requests, prepare_corpus
from ttsbench.report import build_report
from ttsbench.runner import run_suite
from ttsbench.suite import EXECUTOR_TYPES, load_suite
from ttsbench.synthetic import DEFAULT_COUNTS, KINDS, CorpusSpec, make_corpus
from ttsbench.text import TextProcessor
from ttsbench.train import TrainOptions, resolve_device, train



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


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    systems = args.systems.split(",") if args.systems else models.names()
    configs = [(system, models.config_for(system, args.preset)) for system in systems]
    with Workers(args.workers, not args.quiet) as pool:
        corpus, summary = prepare_corpus(args.path, feature_requests(configs), pool)
    print(f"{corpus.name}: {summary} -> {default_cache_dir()}")
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
    for name in models.names():
        print(f"{name}\t{models.describe(name)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    config = models.config_for(args.system, args.preset, args.set or [])
    with Workers(progress=not args.quiet) as pool:
        corpus, _ = prepare_corpus(args.corpus, feature_requests([(args.system, config)]), pool)
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
    result = train(model, corpus, args.out, options)
    if result.state == "diverged":
        print(f"error: {args.system} {result.message}", file=sys.stderr)
        return 3
    rate = result.steps / result.seconds if result.seconds else float("nan")
    print(f"finished {result.steps} steps in {result.seconds:.1f} s of training ({rate:.2f} steps/s); "
          f"loss {result.last_losses.get('loss', float('nan')):.4f}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, checkpoint = load_checkpoint(args.checkpoint, device)
    ids = TextProcessor().encode(args.text)
    started = time.perf_counter()
    synthesis = model.infer(torch.tensor(ids, dtype=torch.long, device=device))
    acoustic = time.perf_counter() - started
    audio = synthesis.to_audio()
    config = synthesis.output_audio_config
    save_audio(args.output, audio, config)
    seconds = len(audio) / config.sample_rate
    print(f"{args.output}: {seconds:.2f} s of audio from {checkpoint['system']} at step {checkpoint['step']}, "
          f"{synthesis.num_frames} frames, acoustic model {acoustic:.2f} s, "
          f"{'stopped by itself' if synthesis.stopped else 'CUT BY THE MAX-LENGTH GUARD'}")
    return 0


def _audio_files(folder: str) -> dict[str, Path]:

    root = Path(folder)
    if not root.is_dir():
        raise OptionError(f"{root}: not a folder")
    return {f.stem: f for f in sorted(root.iterdir()) if f.suffix.lower() in AUDIO_SUFFIXES}


def _read_texts(metadata: str) -> dict[str, str]:
    """id -> text of an LJSpeech-style `id|text[|normalized_text]` file (normalised text preferred)."""
    texts = {}
    try:
        lines = Path(metadata).read_text("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise OptionError(f"{metadata}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2:
            raise OptionError(f"{metadata}:{line_no}: expected 'id|text|normalized_text'")
        texts[fields[0].strip()] = (fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]).strip()
    return texts


def _cmd_score(args: argparse.Namespace) -> int:
    references, syntheses = _audio_files(args.ref), _audio_files(args.syn)
    texts = _read_texts(args.text) if args.text else {}
    requested = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        names = resolve_metrics(requested, have_reference=True, have_text=bool(args.text))
    except (ValueError, KeyError) as err:
        raise OptionError(f"--metrics: {err.args[0] if err.args else err}") from None
    only_ref, only_syn = sorted(set(references) - set(syntheses)), sorted(set(syntheses) - set(references))
    if only_ref or only_syn or not references:
        if not references:
            print(f"error: no .wav or .flac files in {args.ref}", file=sys.stderr)
        if only_ref:
            print(f"error: no synthesis in {args.syn} for: {', '.join(only_ref)}", file=sys.stderr)
        if only_syn:
            print(f"error: no reference in {args.ref} for: {', '.join(only_syn)}", file=sys.stderr)
        return 2
    needs_text = any(METRICS[n].needs_text for n in names)
    if needs_text and (untexted := sorted(set(references) - set(texts))):
        print(f"error: {args.text} has no text for: {', '.join(untexted)}", file=sys.stderr)
        return 2
    if requested is None and not args.text:
        print("note: no --text, so wer and cer are left out")

    speaker = SpeakerReference.of_files(references.values()) if "speaker_sim" in names else None
    rows, scores, failures = [], [], []
    for utt_id in tqdm(sorted(references), desc="score", unit="utt", disable=args.quiet):
        reference, rate = read_mono(references[utt_id])
        synthesis, _ = read_mono(syntheses[utt_id], rate)
        try:
            result = score(reference, synthesis, rate, texts.get(utt_id), names, speaker, utt_id)
        except ValueError as err:
            failures.append(f"{utt_id}: {err}")
            result = unheard(texts.get(utt_id), names)
        scores.append(result.values)
        rows += [_score_row("utterance", utt_id, n, v, text=result.transcript if n == "wer" else None)
                 for n, v in result.values.items()]
    summary = summarise(scores)
    for name, interval in summary.items():
        rows.append(_score_row("set", "", name, interval.value, n=interval.count, low=interval.low, high=interval.high))
        if METRICS[name].counts is not None:
            rows.append(_score_row("utterance_mean", "", name, mean_interval([r[name] for r in scores]).value))
    table = pd.DataFrame(rows, columns=["kind", "id", "metric", "unit", "value", "low", "high", "n", "text"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    _print_summary(f"{len(references)} pairs, {args.ref} (reference) vs {args.syn} (synthesis) -> {args.out}",
                   summary, scores)
    for failure in failures:
        print(f"not scored (nothing heard; other measures NaN): {failure}", file=sys.stderr)
    return 0


def _score_row(kind: str, utt_id: str, metric: str, value: float, n: int = 1, low: float | None = None,
               high: float | None = None, text: str | None = None) -> dict[str, Any]:
    unit = METRICS[metric].unit if metric in METRICS else "count"
    return {"kind": kind, "id": utt_id, "metric": metric, "unit": unit, "value": value, "low": low, "high": high,
            "n": n, "text": text}


def _print_summary(title: str, summary: Mapping[str, Interval], scores: Sequence[Mapping[str, float]]) -> None:
    """The set's value per measure with its 95 % bootstrap interval; error rates as corpus rates."""

    print(title)
    print(f"{'metric':<12} {'unit':<9} {'value':>9} {'95% low':>9} {'95% high':>9} {'n':>4}  better")
    for name, interval in summary.items():
        info = METRICS[name]
        better = "higher" if info.higher_is_better else "lower"
        print(f"{name:<12} {info.unit:<9} {interval.value:>9.3f} {interval.low:>9.3f} {interval.high:>9.3f} "
              f"{interval.count:>4}  {better}")
    for name in (n for n in summary if METRICS[n].counts is not None):
        per_utterance = mean_interval([row[name] for row in scores])
        print(f"{name}: corpus rate (summed errors / summed reference length) above; "
              f"mean of per-utterance rates {per_utterance.value:.3f}")


def _cmd_speed(args: argparse.Namespace) -> int:
    model, checkpoint = load_checkpoint(args.checkpoint, resolve_device(args.device))
    sentences = length_spread_sentences(args.sentences)
    table = measure_rtf(model, sentences, repeats=args.repeats, warmup=args.warmup, progress=not args.quiet)
    env = table.attrs
    print(f"{checkpoint['system']} at step {checkpoint['step']}: batch 1, {args.warmup} warm-up + median of "
          f"{args.repeats} runs, device {env['device']} ({env['device_name']}), {env['threads']} threads, "
          f"torch {env['torch']}")
    print("RTF = synthesis seconds / audio seconds: lower is faster (below 1 is faster than real time)")
    print(table.drop(columns=["id"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    summary = summarise_rtf(table)
    print("median RTF: acoustic {rtf_acoustic:.3f}, vocoder {rtf_vocoder:.3f}, total {rtf_total:.3f}; "
          "median latency {total_seconds:.3f} s".format(**summary))
    print(f"peak memory: {env['memory_method']}")
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"table written to {args.out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
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


def _cmd_report(args: argparse.Namespace) -> int:
    out = args.out or str(Path("reports") / Path(args.run).resolve().name)
    index = build_report(args.run, out, benchmarks=args.benchmarks, price_per_hour=args.price_per_hour,
                         readme=args.readme, skip_damaged=args.skip_damaged,
                         log=lambda line: print(line, file=sys.stderr))
    print(f"report: {index} (and results.csv beside it)")
    return 0


def _cmd_corpus_make(args: argparse.Namespace) -> int:
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


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, so `--steps 0` is refused before any work."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number
    parse.__name__ = f"integer >= {minimum}"
    return parse


_positive, _non_negative = _at_least(1), _at_least(0)


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """`data check`, `data prepare`, `data stats` and `corpus make`: corpora in and out."""
    data = sub.add_parser("data", help="inspect an LJSpeech-format corpus")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a corpus; exit 2 listing every problem")
    check.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    check.set_defaults(func=_cmd_data_check)
    prepare = data_sub.add_parser("prepare", help="compute the features of every utterance ahead of training "
                                  "(process pool; resumable)")
    prepare.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    prepare.add_argument("--systems", help="comma-separated systems whose features to compute (default: all)")
    prepare.add_argument("--preset", choices=PRESETS, default="tiny", help="their preset (default tiny)")
    prepare.add_argument("--workers", type=_positive, help="processes (default: every core)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(func=_cmd_data_prepare)
    stats = data_sub.add_parser("stats", help="durations, text lengths and characters")
    stats.add_argument("path", nargs="?", default=EMBEDDED, help="corpus folder, or 'embedded' (default)")
    stats.set_defaults(func=_cmd_data_stats)

    corpus = sub.add_parser("corpus", help="generate a synthetic corpus spoken by a Piper voice")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    make = corpus_sub.add_parser("make", help="write an LJSpeech-1.1 folder (resumable; texts fixed by --seed)")
    make.add_argument("kind", choices=KINDS, help="spoken digit strings, or LJSpeech sentences")
    make.add_argument("--out", required=True, help="the folder to write (a killed run continues there)")
    make.add_argument("--count", type=_positive, help="utterances in all (default 600)")
    make.add_argument("--seed", type=_non_negative, default=0, help="seeds the texts (default 0)")
    make.add_argument("--min-chars", type=_positive, default=20, help="lj-text: shortest sentence (default 20)")
    make.add_argument("--max-chars", type=_positive, default=90, help="lj-text: longest sentence (default 90)")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(func=_cmd_corpus_make)


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """`list` and `train`."""
    listing = sub.add_parser("list", help="the registered TTS systems, one per line")
    listing.set_defaults(func=_cmd_list)

    tr = sub.add_parser("train", help="train one system; re-running with the same --out resumes")
    tr.add_argument("system", help="a registered system (see `ttsbench list`)")
    tr.add_argument("--preset", choices=PRESETS, default="tiny")
    tr.add_argument("--corpus", default=EMBEDDED, help="LJSpeech-format folder, or 'embedded' (default)")
    tr.add_argument("--steps", type=_positive, default=500)
    tr.add_argument("--seed", type=_non_negative, default=0)
    tr.add_argument("--device", default="auto", choices=DEVICES)
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (YAML value)")
    tr.add_argument("--log-every", type=_positive, default=1)
    tr.add_argument("--val-every", type=_non_negative, default=100, help="validation interval in steps (0: never)")
    tr.add_argument("--checkpoint-every", type=_positive, default=100)
    tr.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.add_argument("--out", required=True, help="run folder (log.jsonl, val.jsonl, checkpoint.pt)")
    tr.set_defaults(func=_cmd_train)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """`synth`, `score` and `speed`: using and measuring a trained model."""
    sy = sub.add_parser("synth", help="synthesise text with a checkpoint (Griffin-Lim vocoder)")
    sy.add_argument("checkpoint")
    sy.add_argument("text")
    sy.add_argument("-o", "--output", required=True, help="output .wav")
    sy.add_argument("--device", default="cpu", choices=DEVICES)
    sy.set_defaults(func=_cmd_synth)

    sc = sub.add_parser("score", help="score synthesised wavs against recordings matched by file name")
    sc.add_argument("--ref", required=True, help="folder of reference recordings (.wav/.flac)")
    sc.add_argument("--syn", required=True, help="folder of syntheses with the same file names")
    sc.add_argument("--text", help="LJSpeech-style metadata.csv (id|text|normalized_text) for wer/cer")
    sc.add_argument("--metrics", help="comma-separated names (default: all the inputs allow); "
                    "see ttsbench.metrics.quality.METRICS")
    sc.add_argument("--out", required=True, help="CSV: one row per utterance and metric, then mean/std rows")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(func=_cmd_score)

    sp = sub.add_parser("speed", help="real-time factor of a checkpoint over LJSpeech test sentences")
    sp.add_argument("checkpoint")
    sp.add_argument("--sentences", type=_positive, default=8, help="sentences spread from shortest to longest")
    sp.add_argument("--repeats", type=_positive, default=3, help="timed runs per sentence (median reported)")
    sp.add_argument("--warmup", type=_non_negative, default=1, help="untimed runs per sentence first")
    sp.add_argument("--device", default="cpu", choices=DEVICES)
    sp.add_argument("--out", help="also write the table as CSV")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_speed)


def _add_suite_commands(sub: argparse._SubParsersAction) -> None:
    """`run` and `report`: suites and their run folders."""
    ru = sub.add_parser("run", help="run a suite's job matrix; re-running the same command resumes")
    ru.add_argument("suite", help="suite YAML file (see suites/)")
    ru.add_argument("--out", required=True, help="run folder: results.jsonl, jobs.json, jobs/JOB/")
    ru.add_argument("--executor", choices=EXECUTOR_TYPES, help="default: the suite's `executor.type` (local)")
    ru.add_argument("--address", help="Ray cluster address (auto, ray://HOST:10001); default: a local instance")
    ru.add_argument("--parallel", type=_positive, help="jobs at a time (default: the suite's, usually 1)")
    ru.add_argument("--retries", type=_non_negative, help="retries of a failed job before it is recorded as failed")
    ru.add_argument("--quiet", action="store_true", help="no progress bars")
    ru.add_argument("--skip-damaged", action="store_true", help="drop damaged lines of results.jsonl (each named) "
                    "and run their jobs again, instead of refusing the run folder")
    ru.set_defaults(func=_cmd_run)

    rp = sub.add_parser("report", help="render a run folder as one self-contained HTML page plus results.csv")
    rp.add_argument("run", help="run folder written by `ttsbench run`")
    rp.add_argument("--out", help="output folder (default: reports/RUN_NAME)")
    rp.add_argument("--benchmarks", help="pytest-benchmark JSON (default: RUN/benchmarks.json when present)")
    rp.add_argument("--price-per-hour", type=float, help="USD per device-hour for the cost table "
                    "(default: the suite's price_per_hour)")
    rp.add_argument("--readme", help="also replace the results block of this README with the summary table")
    rp.add_argument("--skip-damaged", action="store_true", help="leave out damaged lines of results.jsonl "
                    "(each named) instead of refusing the run folder")
    rp.set_defaults(func=_cmd_report)

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
    line with the file holding its traceback (shown in full with --debug), exit 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
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


def _error_text(message: str) -> str:
    """One `error:` line, or the message as it is when it lists problems one per line."""
    return message if "\n" in message or message.startswith("error:") else f"error: {message}"


def _os_error_text(err: OSError) -> str:
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    reason = err.strerror or str(err)
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _write_traceback(err: BaseException) -> Path:
    """The traceback of an unexpected error, kept under the cache for a bug report."""
    folder = cache_root() / "crashes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ttsbench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path.write_text("".join(traceback.format_exception(type(err), err, err.__traceback__)), "utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
