"""One coqui-tts model behind ttsbench's `TTSModel`: the batch mapping, the step and inference.

ttsbench's trainer owns the loop (optimizer, schedule, clipping, validation, budget); each step
it hands a `Batch` here, which becomes coqui's batch dict, and coqui's own `train_step` with its
own criterion returns the loss. Inference is coqui's `inference`. So of the whole pipeline only
the acoustic model and its loss are coqui's; text normalisation, features, vocoder and every
measure are ttsbench's, shared with the system it is compared against.

Text: ttsbench's ids are decoded back to the normalised text they encode, and coqui's own
tokenizer (built from the model's config) encodes that, in training and at inference alike.

Nothing here imports coqui-tts: a subclass's `build_coqui` does, so the registry can list the
systems (and the tests check this mapping) without it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ttsbench.batches import Batch
from ttsbench.models import Alignment, ModelConfig, Synthesis, TTSModel
from ttsbench.text import TextProcessor


class CoquiSystem(TTSModel):
    """A coqui-tts model (`self.coqui`) trained and run through ttsbench's interface.

    Subclasses build the model from their config and say what their batch needs beyond text
    and mel (`extra_inputs`), how their inference output becomes a `Synthesis` and how their
    forward output gives an alignment.
    """

    def __init__(self, config: ModelConfig, num_symbols: int):
        super().__init__(config, num_symbols)
        self.text = TextProcessor()
        self.coqui = self.build_coqui(config)
        self.criterion = self.coqui.get_criterion()

    @abstractmethod
    def build_coqui(self, config: ModelConfig) -> nn.Module:
        """coqui's model at this config's sizes (its tokenizer is built with it)."""

    # ---- the batch --------------------------------------------------------------------------
    def token_ids(self, ids: Sequence[int]) -> list[int]:
        """coqui's ids for the normalised text that ttsbench's ids spell."""
        return list(self.coqui.tokenizer.text_to_ids(self.text.decode(list(ids))))

    def coqui_text(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded coqui ids [B, L'] and their lengths [B], on the batch's device."""
        encoded = [self.token_ids(row[: int(n)].tolist()) for row, n in zip(batch.text_ids, batch.text_lengths)]
        lengths = torch.tensor([len(ids) for ids in encoded], device=batch.text_ids.device)
        padded = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long, device=batch.text_ids.device)
        for b, ids in enumerate(encoded):
            padded[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return padded, lengths

    def coqui_batch(self, batch: Batch) -> dict[str, Any]:
        """coqui's batch dict (the keys its `format_batch` makes) for a ttsbench batch."""
        text, text_lengths = self.coqui_text(batch)
        return {
            "text_input": text,
            "text_lengths": text_lengths,
            "mel_input": batch.mel,
            "mel_lengths": batch.frame_lengths,
            "d_vectors": None,
            "speaker_ids": None,
            "aux_input": {},
            **self.extra_inputs(batch),
        }

    def extra_inputs(self, batch: Batch) -> dict[str, Any]:
        """Further batch keys the model's `train_step` reads (linear, stop targets, pitch...)."""
        return {"durations": None}

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int, network: str = "model") -> dict[str, torch.Tensor]:
        """coqui's `train_step` with its criterion; every scalar it reports is logged."""
        self.before_step(step)
        _, losses = self.coqui.train_step(self.coqui_batch(batch), self.criterion)
        parts = {name: value.detach() for name, value in losses.items()
                 if name != "loss" and isinstance(value, torch.Tensor) and value.numel() == 1}
        return {"loss": losses["loss"], **parts}

    def before_step(self, step: int) -> None:
        """What coqui's Trainer callbacks would set before this step (a loss weight, say)."""

    # ---- inference --------------------------------------------------------------------------
    def infer(self, text_ids: torch.Tensor) -> Synthesis:
        """coqui's `inference` on one utterance, made a `Synthesis` by the subclass."""
        with self.evaluating():
            ids = self.token_ids(text_ids.reshape(-1).tolist())
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            outputs = self.coqui.inference(x, aux_input=self.inference_inputs(x))
            return self.synthesis(outputs)

    def inference_inputs(self, x: torch.Tensor) -> dict[str, Any]:
        return {"x_lengths": torch.tensor([x.shape[1]], device=x.device), "d_vectors": None, "speaker_ids": None}

    @abstractmethod
    def synthesis(self, outputs: dict[str, Any]) -> Synthesis:
        """A `Synthesis` from coqui's inference outputs (batch of one)."""

    def alignment(self, batch: Batch) -> list[Alignment]:
        """Teacher-forced alignment from coqui's forward pass (its `train_step` outputs)."""
        with self.evaluating():
            coqui_batch = self.coqui_batch(batch)
            outputs, _ = self.coqui.train_step(coqui_batch, self.criterion)
        lengths = coqui_batch["text_lengths"].tolist()
        return [self.utterance_alignment(utt_id, outputs, b, int(lengths[b]), int(batch.frame_lengths[b]))
                for b, utt_id in enumerate(batch.ids)]

    @abstractmethod
    def utterance_alignment(self, utt_id: str, outputs: dict[str, Any], b: int, tokens: int,
                            frames: int) -> Alignment:
        """Utterance b's alignment from the forward outputs, trimmed to its lengths."""


def hard_durations(path: torch.Tensor) -> np.ndarray:
    """Frames per token of a hard path [T_frames, T_tokens]."""
    return path.sum(0).round().long().cpu().numpy()
