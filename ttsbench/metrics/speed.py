"""Speed: real-time factor against text length, latency, training steps/s and peak memory.

RTF = synthesis wall seconds / seconds of audio produced. LOWER IS FASTER: 0.1 means ten
seconds of speech take one second to make; above 1 is slower than real time.

Protocol (the same for every system, through `TTSModel.infer` and `Vocoder.vocode` only):
batch 1, `warmup` untimed runs per sentence, then `repeats` timed runs, median reported. Each
run times the acoustic model (`infer`, under `torch.no_grad`) and the vocoder (the suite's, or
the system's own Griffin-Lim where that vocoder cannot serve it) apart and end to end;
total_seconds is the end-to-end median, which is also the latency (seconds until the whole
utterance exists: none of the systems streams). On CUDA the device is synchronised before each
clock read. Sentences come from the standard LJSpeech test split, spread evenly over its length
ranks from the shortest to the longest.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` over the timed runs (tensors only).
On CPU, the growth of the process's resident-set high-water mark (VmHWM in /proc/self/status,
reset through /proc/self/clear_refs before each sentence): everything torch, numpy and
librosa touch, not just Python objects (tracemalloc misses torch's allocator). Where that reset
is not possible (not Linux), `resource.getrusage` gives the lifetime peak instead, which only
shows growth beyond the process's earlier peak; the `memory_method` attribute says which.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ttsbench.data import standard_split_sentences
from ttsbench.fileio import read_jsonl
from ttsbench.options import DEFAULT_VOCODER
from ttsbench.text import TextProcessor

if TYPE_CHECKING:
    import torch

    from ttsbench.models.base import TTSModel
    from ttsbench.vocoders import Vocoder, Waveform

COLUMNS = (
    "id", "chars", "frames", "audio_seconds", "acoustic_seconds", "vocoder_seconds", "total_seconds",
    "rtf_acoustic", "rtf_vocoder", "rtf_total", "peak_memory_mb", "stopped",
)


def length_spread_sentences(count: int = 8, split: str = "test") -> list[tuple[str, str]]:
    """`count` sentences of a standard split at evenly spaced length ranks, shortest to longest."""
    processor = TextProcessor()
    ranked = sorted(standard_split_sentences(split), key=lambda s: (len(processor.clean(s[1])), s[0]))
    if count >= len(ranked):
        return ranked
    picks = np.linspace(0, len(ranked) - 1, count).round().astype(int)
    return [ranked[i] for i in picks]


# --------------------------------------------------------------------------------------------
# Peak memory


def _rss_high_water_kb() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _lifetime_peak_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, kB on Linux


class PeakMemory:
    """Context manager: peak memory growth (MB) of the code inside, for the given device."""

    def __init__(self, device: "torch.device | str" = "cpu"):
        import torch

        self.device = torch.device(device)
        self.megabytes = float("nan")
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        elif _reset_rss_high_water() and _rss_high_water_kb() is not None:
            self._start = _rss_high_water_kb()
            self.method = "RSS high-water mark growth (VmHWM after clear_refs)"
        else:
            self._start = _lifetime_peak_kb()
            self.method = "lifetime peak RSS growth (getrusage ru_maxrss)"
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.megabytes = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self.method.startswith("RSS"):
            self.megabytes = ((_rss_high_water_kb() or self._start) - self._start) / 1024
        else:
            self.megabytes = (_lifetime_peak_kb() - self._start) / 1024


# --------------------------------------------------------------------------------------------
# Real-time factor


def _clock(device: "torch.device") -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_synthesis(model: "TTSModel", text_ids: "torch.Tensor", vocoder: "Vocoder"
                   ) -> tuple[float, float, float, object, "Waveform"]:
    """One timed run: (acoustic s, vocoder s, end-to-end s, synthesis, waveform)."""
    import torch

    device = text_ids.device
    started = _clock(device)
    with torch.no_grad():
        synthesis = model.infer(text_ids)
    acoustic_done = _clock(device)
    waveform = vocoder.vocode(synthesis)
    finished = _clock(device)
    return acoustic_done - started, finished - acoustic_done, finished - started, synthesis, waveform


def measure_rtf(
    model: "TTSModel",
    sentences: Sequence[tuple[str, str]] | None = None,
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = True,
    vocoder: str = DEFAULT_VOCODER,
) -> pd.DataFrame:
    """RTF table, one row per sentence (columns `COLUMNS`); lower RTF is faster.

    The model runs where its parameters are, and so does the vocoder (`vocoder`, or the system's
    own path where that one cannot serve it). `df.attrs` records device, threads, versions, the
    memory method and the vocoder, so a table carries the conditions it was measured under.
    """
    import torch
    from tqdm.auto import tqdm

    from ttsbench import vocoders

    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    sentences = list(sentences) if sentences is not None else length_spread_sentences()
    processor = TextProcessor()
    device = model.device
    voice = vocoders.for_model(vocoder, model)
    rows = []
    memory_method = ""
    for utt_id, text in tqdm(sentences, desc="RTF", unit="sentence", disable=not progress, leave=False):
        ids = torch.tensor(processor.encode(text), dtype=torch.long, device=device)
        for _ in range(warmup):
            time_synthesis(model, ids, voice)
        runs = []
        with PeakMemory(device) as memory:
            for _ in range(repeats):
                runs.append(time_synthesis(model, ids, voice))
        memory_method = memory.method
        synthesis, audio_seconds = runs[-1][3], runs[-1][4].seconds
        acoustic = statistics.median(r[0] for r in runs)
        vocoding = statistics.median(r[1] for r in runs)
        total = statistics.median(r[2] for r in runs)
        rows.append({
            "id": utt_id,
            "chars": len(processor.clean(text)),
            "frames": synthesis.num_frames,
            "audio_seconds": audio_seconds,
            "acoustic_seconds": acoustic,
            "vocoder_seconds": vocoding,
            "total_seconds": total,
            "rtf_acoustic": _per_audio_second(acoustic, audio_seconds),
            "rtf_vocoder": _per_audio_second(vocoding, audio_seconds),
            "rtf_total": _per_audio_second(total, audio_seconds),
            "peak_memory_mb": memory.megabytes,
            "stopped": bool(synthesis.stopped),
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs.update(environment(device), repeats=repeats, warmup=warmup, memory_method=memory_method,
                       vocoder=voice.name)
    return table


def _per_audio_second(seconds: float, audio_seconds: float) -> float:
    return seconds / audio_seconds if audio_seconds > 0 else float("inf")


def environment(device: "torch.device | str") -> dict[str, object]:
    """Device, threads and library versions: what an RTF figure is only valid for."""
    import librosa
    import torch

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "librosa": librosa.__version__,
        "python": platform.python_version(),
    }


def summarise_rtf(table: pd.DataFrame) -> dict[str, float]:
    """Medians over sentences, plus the RTF-against-length slope (RTF per 100 characters)."""
    columns = ("rtf_acoustic", "rtf_vocoder", "rtf_total", "total_seconds")
    summary = {column: float(table[column].median()) for column in columns}
    if len(table) >= 2 and table["chars"].nunique() >= 2:
        summary["rtf_total_per_100_chars"] = float(np.polyfit(table["chars"], table["rtf_total"], 1)[0] * 100)
    return summary


# --------------------------------------------------------------------------------------------
# Training speed


def training_steps_per_second(log: str | Path | pd.DataFrame) -> float:
    """Optimizer steps per second of training wall time, from a run's log.jsonl (or its rows).

    Uses the trainer's `seconds` (training only, evaluation excluded) between the first and
    the last logged step, so start-up and resumption gaps do not count.
    """
    if isinstance(log, pd.DataFrame):
        rows = log
    else:
        path = Path(log)
        path = path / "log.jsonl" if path.is_dir() else path
        rows = pd.DataFrame(read_jsonl(path))
    if "seconds" not in rows or "step" not in rows:
        raise ValueError("the log needs 'step' and 'seconds' columns")
    rows = rows.dropna(subset=["step", "seconds"]).sort_values("step")
    if rows.empty:
        raise ValueError("the log holds no timed steps")
    first, last = rows.iloc[0], rows.iloc[-1]
    if len(rows) == 1 or last["seconds"] <= first["seconds"]:
        return float((last["step"] + 1) / last["seconds"]) if last["seconds"] > 0 else float("nan")
    return float((last["step"] - first["step"]) / (last["seconds"] - first["seconds"]))

