"""The coqui-tts plugin (peer/coqui_plugin) without coqui-tts: it registers through the entry point,
and its wrapper maps ttsbench's batch to the dict coqui's `train_step` reads.

The real models train in `make peer-learn` (the peer venv has coqui-tts); here a fake coqui model
records what it is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

PLUGIN = Path(__file__).resolve().parents[1] / "peer" / "coqui_plugin"
sys.path.insert(0, str(PLUGIN))

from ttsbench_coqui.systems import CoquiFastSpeech2, stop_targets  # noqa: E402
from ttsbench_coqui.wrapper import CoquiSystem  # noqa: E402

from ttsbench.batches import Batch, sequence_mask  # noqa: E402
from ttsbench.models import Alignment, ModelConfig, Synthesis  # noqa: E402
from ttsbench.text import TextProcessor  # noqa: E402


class FakeTokenizer:
    """coqui's tokenizer surface: text -> ids, here 1 + the character's position in a fixed set."""

    ALPHABET = " abcdefghijklmnopqrstuvwxyz,.'"

    def text_to_ids(self, text: str) -> list[int]:
        return [1 + self.ALPHABET.index(c) for c in text]


class FakeCoqui(nn.Module):
    """Records the batch its train_step gets; a loss that depends on a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.tokenizer = FakeTokenizer()
        self.seen: list[dict[str, Any]] = []

    def get_criterion(self) -> str:
        return "criterion"

    def train_step(self, batch: dict[str, Any], criterion: str) -> tuple[dict, dict]:
        assert criterion == "criterion"
        self.seen.append(batch)
        loss = self.scale * batch["mel_input"].mean()
        return {"x": batch["text_input"]}, {"loss": loss, "loss_part": loss * 0.5, "note": "not a tensor"}

    def inference(self, x: torch.Tensor, aux_input: dict[str, Any]) -> dict[str, Any]:
        self.seen.append({"inference": x, **aux_input})
        return {"model_outputs": torch.zeros(1, 3 * x.shape[1], 80)}


class FakeSystem(CoquiSystem):
    """The wrapper around the fake model."""

    Config = ModelConfig

    def build_coqui(self, config: ModelConfig) -> nn.Module:
        return FakeCoqui()

    def synthesis(self, outputs: dict[str, Any]) -> Synthesis:
        return Synthesis(mel=outputs["model_outputs"][0].numpy(), audio_config=self.config.audio)

    def utterance_alignment(self, utt_id: str, outputs: dict[str, Any], b: int, tokens: int,
                            frames: int) -> Alignment:
        return Alignment(utt_id, durations=np.full(tokens, frames // tokens))


def make_batch(texts: list[str], frames: list[int]) -> Batch:
    processor = TextProcessor()
    encoded = [processor.encode(t) for t in texts]
    ids = torch.zeros(len(texts), max(map(len, encoded)), dtype=torch.long)
    for b, row in enumerate(encoded):
        ids[b, : len(row)] = torch.tensor(row)
    frame_lengths = torch.tensor(frames)
    mel = torch.randn(len(texts), max(frames), 80) * sequence_mask(frame_lengths, max(frames)).unsqueeze(-1)
    features = {"mel": mel, "pitch": torch.tensor([[0.0, 100.0, 200.0, 0.0], [300.0, 0.0, 0.0, 0.0]]),
                "energy": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 0.0, 0.0]])}
    return Batch(["a", "b"], texts, ids, torch.tensor([len(r) for r in encoded]), features, frame_lengths)


def test_the_batch_reaches_coqui_as_its_tokenizer_would_encode_the_same_text():
    system = FakeSystem(ModelConfig(), num_symbols=10)
    batch = make_batch(["one two.", "nine"], [4, 2])
    out = system.training_step(batch, step=1)
    seen = system.coqui.seen[-1]
    tokenizer = FakeTokenizer()
    assert seen["text_lengths"].tolist() == [8, 4]  # ttsbench's EOS is not text: coqui's ids only
    assert seen["text_input"][0].tolist() == tokenizer.text_to_ids("one two.")
    assert seen["text_input"][1].tolist() == tokenizer.text_to_ids("nine") + [0] * 4  # padded with 0
    assert seen["mel_input"] is batch.mel and seen["mel_lengths"].tolist() == [4, 2]
    assert seen["speaker_ids"] is None and seen["d_vectors"] is None
    # the loss keeps its graph; other scalars are logged detached; non-tensors are dropped
    assert set(out) == {"loss", "loss_part"} and out["loss"].requires_grad and not out["loss_part"].requires_grad
    out["loss"].backward()
    assert system.coqui.scale.grad is not None


def test_inference_encodes_the_ids_it_is_given_the_same_way():
    system = FakeSystem(ModelConfig(), num_symbols=10)
    ids = torch.tensor(TextProcessor().encode("three"))
    synthesis = system.infer(ids)
    seen = system.coqui.seen[-1]
    assert seen["inference"].tolist() == [FakeTokenizer().text_to_ids("three")]
    assert seen["x_lengths"].tolist() == [5]
    assert synthesis.num_frames == 15 and system.training  # the wrapper's mode came back


def test_stop_targets_are_coqui_s_one_per_decoder_step_from_the_last_frame():
    # coqui's dataset: 0 before the last frame, 1 from it on (padding included); format_batch
    # then marks a decoder step of r frames if any of its frames is 1
    targets = stop_targets(torch.tensor([6, 3]), frames=6, r=2)
    assert targets.tolist() == [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]


def test_pitch_and_energy_are_normalised_as_coqui_s_dataset_does():
    batch = make_batch(["one", "two"], [4, 1])
    pitch = CoquiFastSpeech2.normalised(batch, "pitch", torch.tensor([200.0, 100.0]))
    assert pitch.shape == (2, 1, 4)
    # voiced frames standardised, unvoiced frames and frames past the length stay 0
    assert pitch[0, 0].tolist() == [0.0, -1.0, 0.0, 0.0] and pitch[1, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The plugin pip-installed into its own folder (no coqui-tts), and the environment that sees it."""
    import shutil

    work = tmp_path_factory.mktemp("coqui-plugin")
    source = shutil.copytree(PLUGIN, work / "source", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True, timeout=300)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_the_plugin_registers_coqui_s_systems_through_the_entry_point(installed):
    listed = subprocess.run([sys.executable, "-m", "ttsbench", "list"], env=installed, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    names = {line.split("\t")[0] for line in listed.stdout.splitlines()}
    assert {"coqui-glow-tts", "coqui-tacotron", "coqui-fastspeech2"} <= names
