"""Training examples and padded batches: the one place features meet torch.

An `Example` maps its features from the cache (`ttsbench.featurecache`) until `collate` pads a
batch of them into tensors, so a job's memory does not grow with the corpus. Kept apart from
`ttsbench.data` so that reading and checking a corpus, and the feature workers, import no torch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ttsbench.audio import AudioConfig
from ttsbench.data import Utterance, file_digest
from ttsbench.errors import UserError
from ttsbench.featurecache import FeatureCache, FeatureFiles
from ttsbench.fileindex import flush_all
from ttsbench.text import TextProcessor


@dataclass
class Example:
    """One utterance as training sees it: text ids and its features (mapped from the cache, or
    arrays in memory)."""

    id: str
    text: str
    text_ids: np.ndarray
    features: MutableMapping[str, np.ndarray]

    @property
    def num_frames(self) -> int:
        kind = next(iter(self.features))
        if isinstance(self.features, FeatureFiles):
            return self.features.frames(kind)
        return int(self.features[kind].shape[0])

    def include(self, other: "Example") -> None:
        """Add another front end's features of the same utterance (by reference when mapped)."""
        if isinstance(self.features, FeatureFiles) and isinstance(other.features, FeatureFiles):
            self.features.include(other.features)
        else:
            self.features.update(other.features)


def load_examples(
    utterances: Sequence[Utterance],
    config: AudioConfig,
    kinds: Sequence[str] = ("mel",),
    processor: TextProcessor | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> list[Example]:
    """Text ids and cached features for each utterance, with a progress bar.

    Features not cached yet are computed here, one file at a time; `ttsbench data prepare` (and
    `ttsbench run` before its jobs) computes them in a process pool first.
    """
    processor = processor or TextProcessor()
    cache = cache or FeatureCache(config)
    cache.refresh()
    examples = []
    for utt in tqdm(utterances, desc="features", unit="utt", disable=not progress, leave=False):
        ids = np.asarray(processor.encode(utt.text), dtype=np.int64)
        digest = file_digest(utt.audio_path)
        examples.append(Example(utt.id, utt.text, ids, cache.files(utt.audio_path, kinds, digest)))
    flush_all()
    return examples


@dataclass
class Batch:
    """Padded tensors, time-major: text_ids [B, L], features[k] [B, T, ...], lengths [B].

    `num_frames` is padded up to a multiple of `frame_multiple` (Tacotron's reduction factor r)
    while `frame_lengths` keep the true lengths, so losses mask by the truth.
    """

    ids: list[str]
    texts: list[str]
    text_ids: torch.Tensor
    text_lengths: torch.Tensor
    features: dict[str, torch.Tensor]
    frame_lengths: torch.Tensor
    frame_multiple: int = 1

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def mel(self) -> torch.Tensor:
        return self.features["mel"]

    @property
    def text_mask(self) -> torch.Tensor:
        return sequence_mask(self.text_lengths, self.text_ids.shape[1])

    @property
    def frame_mask(self) -> torch.Tensor:
        return sequence_mask(self.frame_lengths, self.mel.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory, from which a CUDA copy can overlap compute."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        features = {k: function(v) for k, v in self.features.items()}
        return Batch(self.ids, self.texts, function(self.text_ids), function(self.text_lengths), features,
                     function(self.frame_lengths), self.frame_multiple)


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Bool [B, max_length], True on valid positions."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def collate(
    examples: Sequence[Example],
    frame_multiple: int = 1,
    pad_values: dict[str, float] | None = None,
    pad_id: int = 0,
) -> Batch:
    """Pad a list of examples into a `Batch`; features padded with their silence value."""
    pad_values = pad_values or {}
    text_lengths = torch.tensor([len(e.text_ids) for e in examples], dtype=torch.long)
    text_ids = torch.full((len(examples), int(text_lengths.max())), pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        text_ids[i, : len(e.text_ids)] = torch.from_numpy(e.text_ids)
    frame_lengths = torch.tensor([e.num_frames for e in examples], dtype=torch.long)
    max_frames = int(frame_lengths.max())
    max_frames = -(-max_frames // frame_multiple) * frame_multiple
    features = {}
    for kind in examples[0].features:
        first = examples[0].features[kind]
        padded = np.full((len(examples), max_frames, *first.shape[1:]), pad_values.get(kind, 0.0), dtype=np.float32)
        for i, e in enumerate(examples):
            padded[i, : e.num_frames] = e.features[kind]
        if not np.isfinite(padded).all():
            raise DamagedFeaturesError(_non_finite(examples, kind))
        features[kind] = torch.from_numpy(padded)
    return Batch(
        [e.id for e in examples],
        [e.text for e in examples],
        text_ids,
        text_lengths,
        features,
        frame_lengths,
        frame_multiple,
    )


class DamagedFeaturesError(UserError, ValueError):
    """A cached feature holds NaN or inf: a damaged pack, which would turn training into NaN."""


def _non_finite(examples: Sequence[Example], kind: str) -> str:
    """Which example's cached `kind` is not finite, and in which file."""
    bad = next(e for e in examples if not np.isfinite(np.asarray(e.features[kind])).all())
    where = bad.features.source(kind) if isinstance(bad.features, FeatureFiles) else "memory"
    return (f"{where}: the cached {kind} of {bad.id} holds NaN or inf values (a damaged feature pack); "
            "delete that file and it is computed again")


def bucket_batches(lengths: Sequence[int], batch_size: int, seed: int, bucket_factor: int = 4) -> list[list[int]]:
    """Length-bucketed batches: shuffle, sort within pools of batch_size*bucket_factor, chunk.

    Similar lengths share a batch (little padding) while the order of batches stays random.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * bucket_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
