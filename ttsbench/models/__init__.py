"""The system registry: name -> TTSModel subclass, checked against the interface.

Built-in systems register themselves on import; third-party packages add theirs through the
`ttsbench.models` entry-point group (`name = "package.module:ClassName"`), so a sixth system is
one file and one line, here or in another package.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import torch

from ttsbench.models.base import Alignment, ModelConfig, Synthesis, TTSModel

__all__ = [
    "Alignment",
    "ModelConfig",
    "Synthesis",
    "TTSModel",
    "register",
    "get",
    "names",
    "describe",
    "build",
    "load_checkpoint",
]

_REGISTRY: dict[str, type[TTSModel]] = {}
_BUILTIN_MODULES: tuple[str, ...] = ("tacotron", "dc_tts", "glow_tts", "fastspeech2", "rl_duration")
_loaded = False

M = TypeVar("M", bound=type[TTSModel])


def register(name: str):
    """Class decorator: `@register("tacotron-gradual")`."""

    def decorate(cls: M) -> M:
        if not (inspect.isclass(cls) and issubclass(cls, TTSModel)):
            raise TypeError(f"{cls!r} registered as {name!r} is not a TTSModel subclass")
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise TypeError(f"{cls.__name__} registered as {name!r} does not implement: {missing}")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, ModelConfig)):
            raise TypeError(f"{cls.__name__}.Config must subclass ModelConfig")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"system name {name!r} is already registered to {existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"ttsbench.models.{module}")
    for ep in entry_points(group="ttsbench.models"):
        try:
            cls = ep.load()
            if ep.name not in _REGISTRY:
                register(ep.name)(cls)
        except Exception as err:  # a broken plugin must not take the harness down
            warnings.warn(f"ttsbench plugin {ep.name!r} ({ep.value}) failed to load: {err}", stacklevel=2)


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> type[TTSModel]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown system {name!r}; registered: {', '.join(sorted(_REGISTRY)) or 'none'}") from None


def describe(name: str) -> str:
    doc = inspect.getdoc(get(name)) or ""
    return doc.splitlines()[0] if doc else ""


def build(name: str, config: ModelConfig | None = None, preset: str = "tiny", seed: int | None = None) -> TTSModel:
    """Instantiate a system with a config (or its preset) and the shared symbol table.

    With `seed`, the initial weights depend on the seed alone, so a run is reproducible.
    """
    from ttsbench.text import SYMBOLS

    cls = get(name)
    if seed is not None:
        torch.manual_seed(seed)
    return cls(config or cls.Config.preset(preset), num_symbols=len(SYMBOLS))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[TTSModel, dict[str, Any]]:
    """Model (eval mode) and the checkpoint dict, loaded with weights_only=True."""
    checkpoint = torch.load(Path(path), map_location=device, weights_only=True)
    cls = get(checkpoint["system"])
    model = build(checkpoint["system"], cls.Config.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint
