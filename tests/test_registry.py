from __future__ import annotations

import dataclasses

import pytest
import torch

from ttsbench import models
from ttsbench.audio import AudioConfig
from ttsbench.models.base import ModelConfig, Synthesis, TTSModel


@dataclasses.dataclass
class _Config(ModelConfig):
    hidden: int = 4

    @classmethod
    def tiny(cls) -> "_Config":
        return cls()

    @classmethod
    def full(cls) -> "_Config":
        return cls(hidden=8)


class _Complete(TTSModel):
    """A minimal complete system used to exercise the registry."""

    Config = _Config

    def __init__(self, config, num_symbols):
        super().__init__(config, num_symbols)
        self.proj = torch.nn.Linear(1, 1)

    def training_step(self, batch, step, network="model"):
        return {"loss": self.proj.weight.sum()}

    def infer(self, text_ids):
        return Synthesis(mel=torch.zeros(2, 80).numpy(), audio_config=AudioConfig())

    def alignment(self, batch):
        return []


def test_register_checks_the_interface():
    class Incomplete(TTSModel):
        Config = _Config

        def training_step(self, batch, step, network="model"):
            return {}

    with pytest.raises(TypeError, match="does not implement: alignment, infer"):
        models.register("incomplete")(Incomplete)
    with pytest.raises(TypeError, match="not a TTSModel"):
        models.register("nope")(dict)


def test_register_get_build_and_name_clash():
    models.register("test-complete")(_Complete)
    try:
        assert "test-complete" in models.names()
        assert models.get("test-complete") is _Complete
        assert models.describe("test-complete").startswith("A minimal complete system")
        assert models.build("test-complete", preset="full").config.hidden == 8

        class Other(_Complete):
            pass

        with pytest.raises(ValueError, match="already registered"):
            models.register("test-complete")(Other)
    finally:
        models._REGISTRY.pop("test-complete", None)
    with pytest.raises(KeyError, match="unknown system 'test-complete'"):
        models.get("test-complete")


def test_config_overrides_and_round_trip():
    config = _Config().with_overrides(["hidden=16", "audio.n_fft=2048", "betas=[0.5, 0.9]", "learning_rate=2e-4"])
    assert config.hidden == 16 and config.audio.n_fft == 2048 and config.betas == (0.5, 0.9)
    assert config.learning_rate == pytest.approx(2e-4)
    assert _Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="has no field 'hiddn'"):
        config.with_overrides(["hiddn=3"])
    with pytest.raises(ValueError, match="audio has no field 'nfft'"):
        config.with_overrides(["audio.nfft=3"])
    with pytest.raises(ValueError, match="not key=value"):
        config.with_overrides(["hidden"])
    with pytest.raises(ValueError, match="unknown preset"):
        _Config.preset("huge")
