"""The system registry: name -> TTSModel subclass, checked against the interface.

Built-in systems register themselves on import; third-party packages add theirs through the
`ttsbench.models` entry-point group (`name = "package.module:ClassName"`), so a sixth system is
one file and one line, here or in another package.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import torch

from ttsbench.audio import AudioConfig
from ttsbench.errors import CheckpointError, OptionError, UnknownSystemError, first_line
from ttsbench.featurecache import Requests
from ttsbench.models.base import Alignment, ModelConfig, Synthesis, TTSModel
from ttsbench.text import SYMBOLS

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
    "config_for",
    "feature_requests",
    "override_problems",
    "read_checkpoint",
    "load_checkpoint",
    "load_weights",
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
        raise UnknownSystemError(
            f"unknown system {name!r}; registered: {', '.join(sorted(_REGISTRY)) or 'none'}") from None


def describe(name: str) -> str:
    doc = inspect.getdoc(get(name)) or ""
    return doc.splitlines()[0] if doc else ""


def config_for(name: str, preset: str = "tiny", overrides: Iterable[str] = ()) -> ModelConfig:
    """A system's preset config with `key=value` overrides applied: the one way every caller
    (CLI, suites, jobs) builds a config, so they cannot drift apart. Bad overrides raise
    OptionError naming the field."""
    try:
        return get(name).Config.preset(preset).with_overrides(list(overrides))
    except (ValueError, TypeError) as err:
        raise OptionError(f"{name} ({preset}): {err}") from None


def feature_requests(configs: Iterable[tuple[str, ModelConfig]]) -> Requests:
    """The features (system, config) pairs train on, merged per front end: what a preparation
    computes for them."""
    merged: dict[AudioConfig, set[str]] = {}
    for system, config in configs:
        for kind, audio in get(system).features_for(config).items():
            merged.setdefault(audio, set()).add(kind)
    return {audio: tuple(sorted(kinds)) for audio, kinds in merged.items()}


def override_problems(name: str, preset: str, overrides: Mapping[str, Any]) -> dict[str, str]:
    """key -> what is wrong with that override, for suite validation (all keys at once)."""
    base = get(name).Config.preset(preset)
    assignments = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    try:  # together first: fields that must agree (audio.win_length <= audio.n_fft) change together
        base.with_overrides(assignments)
        return {}
    except (ValueError, TypeError) as joint:
        problems = {}
        for key, assignment in zip(overrides, assignments):
            try:
                base.with_overrides([assignment])
            except (ValueError, TypeError) as err:
                problems[key] = f"invalid override: {err}"
        return problems or {list(overrides)[-1]: f"invalid override: {joint}"}


def build(name: str, config: ModelConfig | None = None, preset: str = "tiny", seed: int | None = None) -> TTSModel:
    """Instantiate a system with a config (or its preset) and the shared symbol table.

    With `seed`, the initial weights depend on the seed alone, so a run is reproducible.
    """
    cls = get(name)
    if seed is not None:
        torch.manual_seed(seed)
    return cls(config or cls.Config.preset(preset), num_symbols=len(SYMBOLS))


CHECKPOINT_KEYS = ("system", "config", "model", "step")


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu", system: str | None = None) -> dict[str, Any]:
    """A ttsbench checkpoint as a dict, loaded with weights_only=True (a pickle payload is
    refused without running it). Raises CheckpointError naming the file and what is wrong:
    missing, a folder, empty or truncated, not a ttsbench checkpoint, unsafe, or of another
    system than `system`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused: it holds Python objects{what} beyond tensors and plain data, "
                              "which a weights-only load does not run; it was not executed") from None
    except (RuntimeError, EOFError, OSError, ValueError):
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, or not a file torch.save wrote)") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a ttsbench checkpoint (lacks {', '.join(missing)})")
    if system is not None and checkpoint["system"] != system:
        raise CheckpointError(f"{path}: a checkpoint of {checkpoint['system']!r}, not of {system!r}")
    return checkpoint


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    system: str | None = None) -> tuple[TTSModel, dict[str, Any]]:
    """Model (eval mode) and the checkpoint dict; CheckpointError when the weights do not fit
    the system the checkpoint names (a relabelled checkpoint of another system)."""
    checkpoint = read_checkpoint(path, device, system)
    try:
        cls = get(checkpoint["system"])
        model = build(checkpoint["system"], cls.Config.from_dict(checkpoint["config"]))
    except UnknownSystemError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: its config does not fit system {checkpoint['system']!r} ({first_line(err)})") from None
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), checkpoint


def load_weights(model: TTSModel, weights: Mapping[str, Any], path: str | Path) -> None:
    """`model.load_state_dict`, or CheckpointError saying how the weights in `path` do not fit:
    a relabelled checkpoint of another system lacks the model's weights and has others, and a
    weight holding NaN or inf would only make silence or noise."""
    broken = next((name for name, value in weights.items() if isinstance(value, torch.Tensor)
                   and value.is_floating_point() and not bool(torch.isfinite(value).all())), None)
    if broken is not None:
        raise CheckpointError(f"{path}: weight {broken!r} holds NaN or inf values; the run that wrote it had "
                              "diverged, so nothing it synthesises would mean anything")
    try:
        fit = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # same names, other shapes
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), first_line(err))
        raise CheckpointError(f"{path}: its weights do not fit system {model.name!r} ({mismatch[:200]})") from None
    if fit.missing_keys or fit.unexpected_keys:
        example = (fit.missing_keys or fit.unexpected_keys)[0]
        raise CheckpointError(f"{path}: its weights do not fit system {model.name!r} (lacks {len(fit.missing_keys)} "
                              f"of its weights, has {len(fit.unexpected_keys)} it does not know, e.g. {example!r})")
