"""The interface every TTS system implements, and the types that cross it.

The trainer, metrics, suites and report speak only this surface. A system is a `TTSModel`
subclass with a `Config` dataclass (presets `tiny` and `full`), a `training_step` returning a
loss dict, `infer` returning a `Synthesis`, and a teacher-forced `alignment`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import yaml
from torch import nn

from ttsbench.audio import AudioConfig
from ttsbench.errors import first_line
from ttsbench.batches import Batch
from ttsbench.options import PRESETS
from ttsbench.schedule import Schedule


@dataclass
class ModelConfig:
    """Fields every system has: the audio front end and the optimisation recipe.

    Subclasses add their architecture fields and define `tiny()` and `full()`.
    """

    audio: AudioConfig = field(default_factory=AudioConfig)
    batch_size: int = 16
    optimizer: Literal["adam", "adamw", "radam"] = "adam"
    learning_rate: float = 1e-3
    lr_schedule: Literal["constant", "noam", "exponential"] = "constant"
    warmup_steps: int = 0
    lr_half_life: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 1.0
    grad_clip_value: float | None = None
    # Mixed precision of the training forward pass (torch.autocast; fp16 adds a gradient scaler).
    # Meant for CUDA; off by default, and on CPU it stays off unless measured faster there.
    amp: Literal["off", "bf16", "fp16"] = "off"
    # torch.compile each network's forward in place, with dynamic shapes (batches vary in length);
    # parameter names, hence checkpoints, are unchanged. Compiling costs minutes on the first steps.
    compile: bool = False

    @classmethod
    def tiny(cls) -> "ModelConfig":
        raise NotImplementedError  # abstract: every system defines its presets

    @classmethod
    def full(cls) -> "ModelConfig":
        raise NotImplementedError  # abstract: every system defines its presets

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; use {' or '.join(PRESETS)}")
        return getattr(cls, name)()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Rebuild from `to_dict()` output (e.g. a checkpoint), nested AudioConfig included."""
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if hints[f.name] is AudioConfig and isinstance(value, Mapping):
                value = AudioConfig(**value)
            elif isinstance(value, list) and _is_tuple_type(hints[f.name]):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def with_overrides(self, assignments: Iterable[str]) -> "ModelConfig":
        """Apply `key=value` strings (values parsed as YAML; `audio.n_fft=512` reaches nested)."""
        config = self
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise ValueError(f"override {assignment!r} is not key=value")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as err:
                raise ValueError(f"{key.strip()}: {raw!r} is not a plain YAML value "
                                 f"({getattr(err, 'problem', None) or first_line(err)})") from None
            config = config.replace_path(key.strip(), value)
        check_training_fields(config)
        return config

    def replace_path(self, dotted: str, value: Any) -> "ModelConfig":
        head, _, rest = dotted.partition(".")
        names = {f.name for f in dataclasses.fields(self)}
        if head not in names:
            raise ValueError(f"{type(self).__name__} has no field {head!r}; fields: {', '.join(sorted(names))}")
        current = getattr(self, head)
        if rest:
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"{head!r} is not a nested config, cannot set {dotted!r}")
            inner_names = {f.name for f in dataclasses.fields(current)}
            if rest not in inner_names:
                raise ValueError(f"{head} has no field {rest!r}; fields: {', '.join(sorted(inner_names))}")
            value = _coerce(dotted, value, getattr(current, rest))
            _check_type(dotted, value, typing.get_type_hints(type(current))[rest])
            try:
                inner = dataclasses.replace(current, **{rest: value})
            except ValueError as err:  # the nested config's own checks: name the dotted key
                raise ValueError(f"{dotted}: {err}") from None
            return dataclasses.replace(self, **{head: inner})
        value = _coerce(dotted, value, current)
        _check_type(dotted, value, typing.get_type_hints(type(self))[head])
        return dataclasses.replace(self, **{head: value})


def check_training_fields(config: ModelConfig) -> None:
    """The optimiser fields every system shares, within the range where training means
    something (a NaN learning rate trains nothing; batch 0 has no gradient)."""
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
    for name in ("learning_rate", "eps"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    for name in ("weight_decay", "warmup_steps", "lr_half_life"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    for name in ("grad_clip_norm", "grad_clip_value"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number or null, got {value!r}")
    if not all(math.isfinite(b) and 0 <= b < 1 for b in config.betas):
        raise ValueError(f"betas must lie in [0, 1), got {config.betas!r}")


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Refuse an override the field's annotation does not allow (`batch_size: "sixteen"`), so
    the error names the field at validation instead of failing inside the model later."""
    if not _fits(value, hint):
        raise ValueError(f"{name} needs {_describe(hint)}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, tuple) and _fits_items(value, args)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, hint)  # `audio=5`: set a nested config's fields, `audio.n_fft=512`
    return True  # other annotations: left to the config's own checks


def _fits_items(value: tuple, args: tuple) -> bool:
    if not args:
        return True
    if len(args) == 2 and args[1] is Ellipsis:
        return all(_fits(item, args[0]) for item in value)
    return len(value) == len(args) and all(_fits(item, arg) for item, arg in zip(value, args))


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint in (int, float, str, bool):
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]
    return f"a value of type {getattr(hint, '__name__', None) or str(hint).replace('typing.', '')}"


def _coerce(name: str, value: Any, current: Any) -> Any:
    """Match an override to the field's current type (YAML reads `2e-4` as a string)."""
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(current, float) and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} needs a number, got {value!r}") from None
    return value


def _is_tuple_type(hint: Any) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple or any(
        typing.get_origin(a) is tuple or a is tuple for a in typing.get_args(hint)
    )


@dataclass
class Synthesis:
    """What `infer` returns for one utterance (numpy, time-major).

    alignment: soft attention [T_text, T_steps] when the model attends; None for hard
               alignments (then `durations` carries them). A column covers `frames_per_step`.
    durations: frames per text token when the model has hard durations (or derives them).
    stopped:   True if decoding ended by the model's own stop rule, False if a guard cut it.
    """

    mel: np.ndarray
    audio_config: AudioConfig
    linear: np.ndarray | None = None
    linear_audio_config: AudioConfig | None = None
    alignment: np.ndarray | None = None
    durations: np.ndarray | None = None
    stopped: bool = True
    frames_per_step: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.mel.shape[0])

    @property
    def audio_seconds(self) -> float:
        return self.num_frames * self.audio_config.hop_length / self.audio_config.sample_rate


@dataclass
class Alignment:
    """Teacher-forced alignment of one utterance, trimmed to its true lengths.

    soft:            attention [T_text, T_steps] for attention models; None for systems with
                     hard alignments (MAS, duration predictors), which give `durations` only.
    durations:       frames per token. They sum to the utterance's frames for aligners (attention,
                     MAS); a duration model's own prediction (rl-duration) need not.
    frames_per_step: frames each `soft` column covers (Tacotron's r, DC-TTS's 4; else 1).
    teacher_forced:  the output the model made while fed the recording (autoregressive systems),
                     for what it knows beside what it does free-running: validation vocodes it
                     and scores its WER as `tf_wer`.
    """

    id: str
    soft: np.ndarray | None = None
    durations: np.ndarray | None = None
    frames_per_step: int = 1
    teacher_forced: Synthesis | None = None


class TTSModel(nn.Module, ABC):
    """A TTS training system behind the harness interface.

    Class attributes set by each system:
      name:            the registry name (set by `@register`).
      Config:          its config dataclass.
      feature_kinds:   cached features its batches need (keys of `ttsbench.featurecache.FEATURES`).
    networks:        independently trained networks, each with its own optimizer and timer.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    feature_kinds: ClassVar[tuple[str, ...]] = ("mel",)
    networks: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, config: ModelConfig, num_symbols: int):
        super().__init__()
        self.config = config
        self.num_symbols = num_symbols

    # ---- training ---------------------------------------------------------------------------
    @abstractmethod
    def training_step(self, batch: Batch, step: int, network: str = "model") -> dict[str, torch.Tensor]:
        """Forward + losses for one batch. Must contain 'loss'; other keys are logged parts.

        `batch` is already on the model's device (the trainer moves every batch it collates),
        so systems do not move it again. Systems made of independently trained networks
        (DC-TTS) list them in `networks`; the trainer then calls this once per network, each
        with its own optimizer and timer.
        """

    def schedules(self) -> dict[str, Schedule]:
        """Scheduled quantities this system uses besides the learning rate (e.g. r, batch_size)."""
        return {}

    def apply_schedules(self, values: Mapping[str, float]) -> None:
        """Receive this step's scheduled values (called by the trainer before each step)."""

    def frame_multiple(self) -> int:
        """Batches' frame axis is padded to a multiple of this (Tacotron's r, DC-TTS's 4)."""
        return 1

    def feature_audio_configs(self) -> dict[str, AudioConfig]:
        """Audio settings per feature kind; defaults to the config's front end for all."""
        return self.features_for(self.config)

    @classmethod
    def features_for(cls, config: ModelConfig) -> dict[str, AudioConfig]:
        """The feature kinds a model of this config trains on, each with its front end: what
        `ttsbench data prepare` computes before a job, without building the model."""
        return {kind: config.audio for kind in cls.feature_kinds}

    def warmup_batches_needed(self) -> int:
        """How many training batches `on_train_start` wants (SNIP scores over k batches)."""
        return 1

    def on_train_start(self, batches: Sequence[Batch]) -> None:
        """One-off work before the first step (data-dependent init, SNIP scores).

        `batches` is a lazy sequence: each index collates a batch and moves it to the device.
        """

    def network_parameters(self, network: str) -> list[nn.Parameter]:
        """The parameters one network's optimizer updates (all of them for a single network)."""
        return [p for p in self.parameters() if p.requires_grad]

    def network_steps(self) -> dict[str, int]:
        """Step budgets of networks that train for fewer steps than the run: a network listed
        here is updated only at steps below its budget. For systems whose networks are trained
        independently, each on its own budget (DC-TTS's Text2Mel and SSRN)."""
        return {}

    def after_optimizer_step(self, step: int) -> None:
        """Hook after each update (e.g. re-apply sparsity masks)."""

    def compile_networks(self) -> None:
        """torch.compile the forward of every top-level module in place (config `compile`).

        In place, so parameter names and checkpoints stay those of the eager model; dynamic
        shapes, because every batch has its own lengths.
        """
        for module in self.children():
            module.compile(dynamic=True)

    # ---- inference --------------------------------------------------------------------------
    @abstractmethod
    def infer(self, text_ids: torch.Tensor) -> Synthesis:
        """Free-running synthesis of one utterance from a 1-D tensor of symbol ids.

        Runs inside `evaluating()`, so callers need not set eval mode (or no_grad) around it;
        `text_ids` may be on any device.
        """

    @abstractmethod
    def alignment(self, batch: Batch) -> list[Alignment]:
        """Teacher-forced alignment for each utterance of a batch (for stability measures).

        Runs inside `evaluating()`; `batch` is on the model's device, as the trainer passes it.
        """

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode and no autograd for the block, then the caller's mode back.

        `infer` and `alignment` run in it: dropout and batch statistics must not touch a
        synthesis, and the trainer validates mid-run, so training mode has to survive the call.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
