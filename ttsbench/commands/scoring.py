"""`ttsbench synth|vocode|score|speed`: using and measuring a trained model and a vocoder."""

from __future__ import annotations

import argparse
import tempfile
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf
import torch
from tqdm.auto import tqdm
from unidecode import unidecode

from ttsbench import vocoders
from ttsbench.audio import AudioConfig, read_mono, save_audio
from ttsbench.data import AUDIO_SUFFIXES
from ttsbench.errors import OptionError, first_line
from ttsbench.fileio import foreign_entries
from ttsbench.metrics.quality import MAX_SCORED_SECONDS, METRICS, resolve_metrics, score, summarise, unheard
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.metrics.speed import length_spread_sentences, measure_rtf, summarise_rtf
from ttsbench.metrics.stats import Interval, mean_interval
from ttsbench.models import load_checkpoint
from ttsbench.text import TextProcessor
from ttsbench.train import resolve_device


def cmd_synth(args: argparse.Namespace) -> int:
    _check_output_wav(Path(args.output))
    processor = TextProcessor()
    _check_speakable(args.text, processor)
    device = resolve_device(args.device)
    model, checkpoint = load_checkpoint(args.checkpoint, device)
    ids = processor.encode(args.text)
    started = time.perf_counter()
    synthesis = model.infer(torch.tensor(ids, dtype=torch.long, device=device))
    acoustic = time.perf_counter() - started
    voice = _vocoder_for(args.vocoder, synthesis.audio_config, str(device), checkpoint["system"])
    waveform = voice.vocode(synthesis)
    save_audio(args.output, waveform.audio, waveform.config)
    print(f"{args.output}: {waveform.seconds:.2f} s of audio from {checkpoint['system']} at step {checkpoint['step']}, "
          f"{synthesis.num_frames} frames, acoustic model {acoustic:.2f} s, vocoder {voice.name}, "
          f"{'stopped by itself' if synthesis.stopped else 'CUT BY THE MAX-LENGTH GUARD'}")
    return 0


def _check_output_wav(path: Path) -> None:
    """Refuse an output that cannot be written before the synthesis is spent on it."""
    if path.suffix.lower() != ".wav":
        raise OptionError(f"-o {path}: name a .wav file (the audio is written as 16-bit PCM WAV)")
    if path.is_dir():
        raise OptionError(f"-o {path}: is a folder; name a .wav file")
    parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    try:  # a real probe: permissions alone do not tell (root, read-only mounts, /proc)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise OptionError(f"-o {path}: cannot write in {parent} ({err.strerror or err})") from None


def _check_speakable(text: str, processor: TextProcessor) -> None:
    """Refuse text with nothing to say, or with characters that would be dropped without a word."""
    dropped = sorted({c for c in text if not c.isspace() and not unidecode(c).strip()})
    if dropped:
        raise OptionError(f"text: {' '.join(dropped)!r} cannot be spoken (no ASCII reading); remove it")
    if not any(c.isalnum() for c in processor.clean(text)):
        raise OptionError(f"text {text!r}: nothing to speak (no letters or digits)")


def _vocoder_for(name: str, mel_config: AudioConfig, device: str, system: str) -> vocoders.Vocoder:
    """The vocoder asked for, or the system's own path with a note saying why."""
    voice = vocoders.resolve(name, mel_config, device)
    if voice.name != name:
        print(f"note: {system}: {vocoders.get(name).refusal(mel_config)}; vocoded by {voice.name}, its own path")
    return voice


VOCODE_MARKER = ".ttsbench-vocode"  # names a folder `ttsbench vocode` wrote, so a re-run may write into it


def cmd_vocode(args: argparse.Namespace) -> int:
    """Copy synthesis of a folder of recordings: each one's mel through the vocoder, so a user can
    measure a vocoder's ceiling on their own data (then `ttsbench score`)."""
    recordings = _audio_files(args.wavdir)
    if not recordings:
        raise OptionError(f"{args.wavdir}: no .wav or .flac files")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or foreign_entries(out, VOCODE_MARKER)):
        raise OptionError(f"-o {out}: exists and is not a folder `ttsbench vocode` wrote; "
                          "name a new or empty folder (nothing was written)")
    voice = vocoders.get(args.vocoder, str(resolve_device(args.device)))
    out.mkdir(parents=True, exist_ok=True)
    (out / VOCODE_MARKER).write_text(f"{voice.name}\n", "utf-8")
    seconds = 0.0
    for utt_id, path in tqdm(recordings.items(), desc=voice.name, unit="file", disable=args.quiet):
        audio, rate = read_mono(path)
        waveform = voice.copy(audio, rate)
        save_audio(out / f"{utt_id}.wav", waveform.audio, waveform.config)
        seconds += waveform.seconds
    print(f"{out}: {len(recordings)} files, {seconds:.1f} s of audio, copies through {voice.name} "
          f"({voice.description}); score them with: ttsbench score --ref {args.wavdir} --syn {out}")
    return 0


def _audio_files(folder: str) -> dict[str, Path]:

    root = Path(folder)
    if not root.is_dir():
        raise OptionError(f"{root}: not a folder")
    return {f.stem: f for f in sorted(root.iterdir()) if f.suffix.lower() in AUDIO_SUFFIXES}


def _check_scorable(path: Path) -> None:
    """A file that is not audio, or too long to align, named in one line before any scoring."""
    try:
        seconds = sf.info(str(path)).duration
    except sf.LibsndfileError as err:
        raise OptionError(f"{path}: not readable audio ({first_line(err)})") from None
    if seconds > MAX_SCORED_SECONDS:
        raise OptionError(f"{path}: {seconds:,.0f} s long; score aligns whole files (DTW over 5 ms frames, "
                          f"memory growing with the square of the length), so at most {MAX_SCORED_SECONDS} s: "
                          "cut it into utterances")


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


def cmd_score(args: argparse.Namespace) -> int:
    references, syntheses = _audio_files(args.ref), _audio_files(args.syn)
    texts = _read_texts(args.text) if args.text else {}
    requested = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics is not None else None
    if requested == []:
        raise OptionError(f"--metrics {args.metrics!r}: names no metric; known: {', '.join(METRICS)}")
    try:
        names = resolve_metrics(requested, have_reference=True, have_text=bool(args.text))
    except (ValueError, KeyError) as err:
        raise OptionError(f"--metrics: {err.args[0] if err.args else err}") from None
    only_ref, only_syn = sorted(set(references) - set(syntheses)), sorted(set(syntheses) - set(references))
    if only_ref or only_syn or not references:
        if not references:
            print(f"error: no .wav or .flac files in {args.ref}", file=sys.stderr)
        if only_ref:
            print(f"error: no synthesis in {args.syn} for {_ids(only_ref)}", file=sys.stderr)
        if only_syn:
            print(f"error: no reference in {args.ref} for {_ids(only_syn)}", file=sys.stderr)
        return 2
    needs_text = any(METRICS[n].needs_text for n in names)
    if needs_text and (untexted := sorted(set(references) - set(texts))):
        print(f"error: {args.text} has no text for {_ids(untexted)}", file=sys.stderr)
        return 2
    if requested is None and not args.text:
        print("note: no --text, so wer and cer are left out")

    for path in [*references.values(), *syntheses.values()]:
        _check_scorable(path)
    try:
        speaker = SpeakerReference.of_files(references.values()) if "speaker_sim" in names else None
    except ValueError as err:
        raise OptionError(f"--ref {args.ref}: no speaker reference ({err}); leave speaker_sim out with --metrics") from None
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
    for failure in failures[:LISTED]:
        print(f"not scored (nothing heard; other measures NaN): {failure}", file=sys.stderr)
    if len(failures) > LISTED:
        print(f"... and {len(failures) - LISTED} more not scored ({len(failures)} in all)", file=sys.stderr)
    if len(failures) == len(references):
        print(f"error: none of the {len(references)} syntheses could be scored", file=sys.stderr)
        return 2
    return 0


LISTED = 10  # ids named in one message; the rest are counted


def _ids(ids: Sequence[str]) -> str:
    """'N file(s): a, b, c' with at most LISTED ids named, so 500 missing files stay readable."""
    named = ", ".join(ids[:LISTED]) + (f", ... ({len(ids) - LISTED} more)" if len(ids) > LISTED else "")
    return f"{len(ids)} file(s): {named}"


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


def cmd_speed(args: argparse.Namespace) -> int:
    model, checkpoint = load_checkpoint(args.checkpoint, resolve_device(args.device))
    sentences = length_spread_sentences(args.sentences)
    table = measure_rtf(model, sentences, repeats=args.repeats, warmup=args.warmup, progress=not args.quiet,
                        vocoder=args.vocoder)
    env = table.attrs
    print(f"{checkpoint['system']} at step {checkpoint['step']}: batch 1, {args.warmup} warm-up + median of "
          f"{args.repeats} runs, device {env['device']} ({env['device_name']}), {env['threads']} threads, "
          f"torch {env['torch']}, vocoder {env['vocoder']}")
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
