"""Watching a training run while it runs: observers the trainer tells about its steps.

The jsonl files stay the record every number comes from; an observer only shows the run as it
goes. `TrainObserver` is what the trainer calls; `TensorBoard` writes event files that
`tensorboard --logdir RUN` shows live (scalars, alignment maps, validation audio), the way
Coqui, ESPnet2 and NeMo runs are watched. The suite's progress display has its own observer
(`ttsbench.progress.StatusFile`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttsbench.errors import UserError

TRACKING_INSTALL_HINT = "TensorBoard tracking needs the tensorboard package: pip install 'ttsbench[tracking]'"
IMAGES_PER_VALIDATION = 2  # alignment maps written per validation: enough to see it align, small event files


class TrainObserver:
    """What the trainer reports as it goes; every method does nothing unless overridden."""

    wants_audio = False  # True: validation vocodes its syntheses for `on_validation` even when unscored

    def on_step(self, step: int, seconds: float, losses: Mapping[str, float], values: Mapping[str, float]) -> None:
        """A logged step (the steps log.jsonl gets): its loss parts and schedule values."""

    def on_validation(self, row: Mapping[str, Any], alignments: Mapping[str, np.ndarray],
                      audio: Sequence[tuple[str, np.ndarray, int]]) -> None:
        """A validation: its val.jsonl row, the teacher-forced alignments (ID -> soft [T_text, T_steps],
        ID/durations -> frames per token), and the vocoded syntheses (ID, samples, rate) when audio was scored."""

    def close(self) -> None:
        """The run ended (finished, capped or diverged)."""


def require_tensorboard() -> None:
    """Refuse `--tensorboard` / `tracking: tensorboard` up front when the package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError(TRACKING_INSTALL_HINT) from None


class TensorBoard(TrainObserver):
    """Train and validation scalars, alignment images and validation audio under `log_dir`."""

    wants_audio = True

    def __init__(self, log_dir: Path):
        require_tensorboard()
        self.log_dir = log_dir
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        """Made at the first event, so a run refused before its first step leaves no folder."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def on_step(self, step: int, seconds: float, losses: Mapping[str, float], values: Mapping[str, float]) -> None:
        for name, value in {**losses, **values}.items():
            if not name.startswith("seconds/"):
                self.writer.add_scalar(f"train/{name}", value, step + 1)
        self.writer.add_scalar("train/seconds", seconds, step + 1)

    def on_validation(self, row: Mapping[str, Any], alignments: Mapping[str, np.ndarray],
                      audio: Sequence[tuple[str, np.ndarray, int]]) -> None:
        step = int(row["step"])
        for name, value in row.items():
            if name not in ("step", "samples") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"val/{name}", value, step)
        for utt_id, matrix in alignment_matrices(alignments)[:IMAGES_PER_VALIDATION]:
            self.writer.add_image(f"alignment/{utt_id}", alignment_image(matrix), step, dataformats="HW")
        for utt_id, samples, rate in audio[:IMAGES_PER_VALIDATION]:
            self.writer.add_audio(f"audio/{utt_id}", np.clip(samples, -1.0, 1.0), step, sample_rate=rate)
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def alignment_matrices(alignments: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(ID, [T_text, T_steps]) per utterance: the soft attention where there is one, else the hard
    path its durations give (MAS and duration models)."""
    matrices = []
    for key, value in alignments.items():
        if key.endswith("/durations"):
            utt_id = key.removesuffix("/durations")
            if utt_id not in alignments:
                durations = np.asarray(value, dtype=np.int64)
                path = np.zeros((len(durations), int(durations.sum())), dtype=np.float32)
                path[np.repeat(np.arange(len(durations)), durations), np.arange(path.shape[1])] = 1.0
                matrices.append((utt_id, path))
        else:
            matrices.append((key, np.asarray(value, dtype=np.float32)))
    return matrices


def alignment_image(matrix: np.ndarray) -> np.ndarray:
    """An alignment [T_text, T_steps] as an image with the first token at the bottom and time
    across (how the papers draw it), scaled to [0, 1] by its own peak."""
    image = np.ascontiguousarray(matrix[::-1], dtype=np.float32)
    peak = float(image.max()) if image.size else 0.0
    return image / peak if peak > 0 else image
