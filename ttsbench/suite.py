"""Suite files: which systems, on which corpus, with which seeds and budget, measured how.

A suite is a YAML file (see `suites/`); `load_suite` validates it and names the file, the line
and the key of every problem it finds. `Suite.jobs()` expands the matrix system x preset x
seed into `Job`s, each with a config hash that changes whenever anything that shapes its
numbers changes (model config after overrides, budget, validation and evaluation settings,
corpus), so a resumed run never mixes rows of two different recipes.

Schema (every key but `systems` has a default):

    name: cpu                      # the suite's name (default: the file's stem)
    description: ...
    corpus: embedded               # or a path to an LJSpeech-1.1-format folder, or a synthetic
                                   # corpus made by the Piper voice: digits | lj-text, or
                                   # {kind: digits, count: 600, seed: 0} (ttsbench.synthetic.CorpusSpec);
                                   # generated into the cache on first use, reused after
    seeds: [0, 1]
    device: auto                   # cpu | cuda | auto
    threads: 2                     # torch CPU threads per job (null: torch's choice)
    budget: {steps: 400, minutes: 1.5}   # either or both: the first reached ends training
    budget: {minutes: 10, until: {wer: 0.2}, consecutive: 2}   # time to a quality target: stop
                                   # at the validation where every measure of `until` has met its
                                   # threshold `consecutive` times in a row; steps/minutes cap it
    budget: {minutes: 10, until: {wer: 0.2}, confirm: 20}   # a validation that meets the target
                                   # on its few utterances is scored again on the first 20
                                   # validation utterances, and only that confirmation decides
    log_every: 10                  # loss rows kept in the results every N steps
    checkpoint_every: 50
    validation: {every: 50, utterances: 2, metrics: [mcd, wer]}   # metrics: quality measures on
                                   # the vocoded validation synthesis (slow; default none);
                                   # with wer, the report gives steps and seconds to intelligible
    evaluation:                    # after training, on the corpus's test split
      utterances: 2
      metrics: [mcd, f0_rmse, pesq, stoi, wer, cer, speaker_sim, mos, dnsmos_ovrl]   # or "all"
      rtf_sentences: 4             # LJSpeech test sentences spread over length
      rtf_repeats: 2
      hard_sentences: 8            # first N of the hard-sentence set (0: skip)
      audio_samples: 1             # wavs kept per job for the report's players
    vocoder: hifigan-universal     # griffin-lim | hifigan-lj | hifigan-universal (the default): for
                                   # validation and evaluation audio; a system whose mel the vocoder
                                   # was not trained on (DC-TTS) is heard through its own path,
                                   # Griffin-Lim; the reference job copies the recordings through
                                   # each vocoder the systems use (the ceilings)
    tracking: none                 # or tensorboard: live curves, alignment images and validation
                                   # audio under jobs/JOB/tensorboard (`tensorboard --logdir RUN`);
                                   # the jsonl files stay the record, so it is not in the hash
    thresholds: {alignment: 0.5, duration_change: 1.0, mel_l1_dtw: 1.0, mcd: 8.0, wer: 0.3}
    price_per_hour: 3.06           # USD per device-hour, for the cost table
    executor: {type: local, parallel: 1, retries: 0, cpus_per_job: 1, gpus_per_job: 0, address: null}
    executor: {type: slurm, partition: gpu, time_limit: 1500, cpus_per_job: 8, gpus_per_job: 1, retries: 1}
    systems:
      - system: tacotron-gradual   # a registered name (`ttsbench list`)
        variant: tacotron-r2       # label in tables (default: the system name); unique
        preset: tiny               # tiny | full
        set: {gradual_training: [[0, 2, 8]]}   # config overrides, dotted keys allowed
        budget: {steps: 200}       # optional per-system budget
    claims: {...}                  # see ttsbench.claims
    peers: {glow-tts: coqui-glow-tts}   # variant: the same architecture from another toolkit;
                                   # the report compares each pair's time to intelligible
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ttsbench import models
from ttsbench.audio import AudioConfig
from ttsbench.claims import CLAIMS
from ttsbench.errors import UserError
from ttsbench.metrics.alignment import load_hard_sentences
from ttsbench.metrics.quality import METRICS
from ttsbench.options import (
    CORPUS_KINDS,
    DEFAULT_VOCODER,
    DEVICES,
    EXECUTOR_TYPES,
    FALLBACK_VOCODER,
    MAX_SEED,
    PRESETS,
    TRACKERS,
    VOCODERS,
)
from ttsbench.synthetic import DIGIT_HARD_SENTENCES, CorpusSpec, cached_corpus, corpus_cache_path

# Measures every validation gives besides the quality metrics of `validation.metrics`.
VALIDATION_MEASURES = ("mel_l1_dtw", "diagonal_score", "focus_rate", "free_diagonal_score", "free_focus_rate",
                       "length_ratio", "stopped", "duration_change")
REFERENCE_JOB = "reference"  # the job that scores the recordings and their vocoder copies
REFERENCE_VARIANT = "recording"
CEILING_PREFIX = "ceiling: "  # the reference job's variant for the recordings copied through one vocoder
OLD_CEILING_VARIANT = "vocoder-ceiling"  # runs made before vocoders were named: Griffin-Lim


def ceiling_variant(vocoder: str) -> str:
    return CEILING_PREFIX + vocoder


def is_reference_variant(variant: str) -> bool:
    """The recordings and their copies through a vocoder: what systems are read against."""
    return variant in (REFERENCE_VARIANT, OLD_CEILING_VARIANT) or variant.startswith(CEILING_PREFIX)


class SuiteError(UserError, ValueError):
    """A suite file is malformed; the message lists every problem as FILE:LINE: key: what."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple:  # pickled by a job process: rebuild from the problems, not the text
        return (type(self), (self.problems,))


@dataclass(frozen=True)
class Budget:
    """How long a job trains: a cap in steps and/or minutes, and optionally a quality target.

    With `until` (validation measure -> threshold, e.g. {"wer": 0.2}) the job stops at the
    validation where every measure has met its threshold `consecutive` times in a row (MLPerf
    Training's "time to train"); the cap then only ends a job that never gets there. With
    `confirm`, a validation meets the target only if the first `confirm` validation utterances
    (more than a validation scores) meet it too: four utterances alone can be a lucky draw.
    """

    steps: int | None = None
    minutes: float | None = None
    until: tuple[tuple[str, float], ...] = ()
    consecutive: int = 1
    confirm: int = 0

    @property
    def max_seconds(self) -> float | None:
        return self.minutes * 60.0 if self.minutes is not None else None

    def identity(self) -> dict[str, Any]:
        """What the config hash covers: a budget without a target hashes as it always did."""
        data = {"steps": self.steps, "minutes": self.minutes}
        if self.until:
            data.update(until=[list(t) for t in self.until], consecutive=self.consecutive)
        if self.confirm:
            data.update(confirm=self.confirm)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Budget":
        values = dict(data)
        values["until"] = tuple((str(m), float(t)) for m, t in values.get("until", ()))
        return cls(**values)


@dataclass(frozen=True)
class Evaluation:
    utterances: int = 2
    metrics: tuple[str, ...] = ("mcd", "f0_rmse", "vuv_error", "pesq", "stoi", "wer", "cer", "speaker_sim",
                                 "mos", "dnsmos_ovrl")
    rtf_sentences: int = 4
    rtf_repeats: int = 2
    hard_sentences: int = 8
    audio_samples: int = 1


@dataclass(frozen=True)
class ExecutorSpec:
    """Where jobs run. local: `parallel` child processes; ray: tasks of `cpus_per_job` and
    `gpus_per_job` on the cluster at `address`; slurm: one sbatch job each, on `partition`, with
    `time_limit` minutes (requeued jobs resume from their checkpoint)."""

    type: str = "local"
    parallel: int = 1
    retries: int = 0
    cpus_per_job: float = 1
    gpus_per_job: float = 0
    address: str | None = None
    partition: str | None = None
    time_limit: float | None = None


@dataclass(frozen=True)
class SystemEntry:
    system: str
    variant: str
    preset: str = "tiny"
    overrides: tuple[tuple[str, Any], ...] = ()
    budget: Budget | None = None

    def override_strings(self) -> list[str]:
        """`key=value` strings for ModelConfig.with_overrides (values as YAML)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.overrides]


@dataclass(frozen=True)
class Job:
    """One training run of the matrix plus its final evaluation."""

    id: str
    system: str
    variant: str
    preset: str
    seed: int
    overrides: tuple[str, ...]
    budget: Budget
    config_hash: str
    kind: str = "train"  # "train", or "reference": the recordings and their vocoder ceiling

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        values = dict(data)
        values["budget"] = Budget.from_dict(values["budget"])
        values["overrides"] = tuple(values["overrides"])
        return cls(**values)


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    corpus: str = "embedded"
    corpus_options: tuple[tuple[str, Any], ...] = ()  # CorpusSpec fields of a synthetic corpus
    description: str = ""
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    threads: int | None = None
    budget: Budget = field(default_factory=lambda: Budget(steps=100))
    log_every: int = 10
    checkpoint_every: int = 50
    val_every: int = 50
    val_utterances: int = 2
    val_metrics: tuple[str, ...] = ()
    evaluation: Evaluation = field(default_factory=Evaluation)
    vocoder: str = DEFAULT_VOCODER
    tracking: str = "none"
    thresholds: tuple[tuple[str, float], ...] = (
        ("alignment", 0.5), ("duration_change", 1.0), ("mel_l1_dtw", 1.0), ("mcd", 8.0), ("wer", 0.3))
    price_per_hour: float = 0.0
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    systems: tuple[SystemEntry, ...] = ()
    claims: tuple[tuple[str, Any], ...] = ()
    peers: tuple[tuple[str, str], ...] = ()  # (ttsbench variant, its peer's variant)

    def corpus_spec(self) -> CorpusSpec | None:
        """What to generate, for a synthetic corpus (`digits`, `lj-text`); None for a folder."""
        return CorpusSpec.default(self.corpus, **dict(self.corpus_options)) if self.corpus in CORPUS_KINDS else None

    def corpus_location(self) -> str:
        """The corpus folder: environment variables and ~ expanded, a synthetic corpus's cache
        folder ("embedded" stays as it is)."""
        spec = self.corpus_spec()
        return str(corpus_cache_path(spec)) if spec else os.path.expanduser(os.path.expandvars(self.corpus))

    def corpus_folder_problem(self) -> str | None:
        """Why a corpus folder cannot be used (an unset variable, no such folder), or None."""
        location = self.corpus_location()
        if self.corpus_spec() is not None or location == "embedded" or Path(location).is_dir():
            return None
        unset = [word for word in self.corpus.replace("${", "$").replace("}", "").split("/")
                 if word.startswith("$") and word[1:] not in os.environ]
        if unset:
            return (f"{self.path}: corpus {self.corpus!r} names the environment variable {unset[0][1:]}, which is "
                    f"not set; set it to an LJSpeech-1.1 folder (export {unset[0][1:]}=/path/to/LJSpeech-1.1)")
        return f"{self.path}: corpus {self.corpus!r} is {location!r}, which is not a folder (set the variable or edit the suite)"

    def prepare_corpus(self, progress: bool = True) -> str:
        """`corpus_location()`, generating a synthetic corpus first if the cache lacks it."""
        spec = self.corpus_spec()
        return str(cached_corpus(spec, progress)) if spec else self.corpus_location()

    def hard_sentence_set(self) -> list[tuple[str, str]]:
        """The hard sentences fitting the corpus: digit runs for digits, else the English set."""
        return list(DIGIT_HARD_SENTENCES) if self.corpus == "digits" else load_hard_sentences()

    def shared_settings(self) -> dict[str, Any]:
        """Everything besides the model config that shapes a job's numbers."""
        return {
            "corpus": self.corpus,
            **({"corpus_options": dict(self.corpus_options)} if self.corpus_options else {}),
            "val_every": self.val_every,
            "val_utterances": self.val_utterances,
            "val_metrics": list(self.val_metrics),
            "evaluation": asdict(self.evaluation),
            "log_every": self.log_every,
            **({"vocoder": self.vocoder} if self.vocoder != FALLBACK_VOCODER else {}),  # the old hash: griffin-lim
        }

    def vocoders_used(self) -> list[str]:
        """The vocoders the systems are heard through: the suite's, and Griffin-Lim for a system
        whose mel that vocoder was not trained on (`ttsbench.vocoders.resolve`)."""
        from ttsbench import vocoders

        used = {vocoders.resolve(self.vocoder, models.get(e.system).features_for(
            models.config_for(e.system, e.preset, e.override_strings()))["mel"]).name for e in self.systems}
        return sorted(used, key=VOCODERS.index)

    def jobs(self) -> list[Job]:
        """The reference job, then system x seed in file order."""
        ceilings = self.vocoders_used()
        reference = {"reference": self.shared_settings(),
                     **({"ceilings": ceilings} if ceilings != [FALLBACK_VOCODER] else {})}  # as before vocoders
        jobs = [Job(REFERENCE_JOB, REFERENCE_VARIANT, REFERENCE_VARIANT, "-", 0, (), Budget(steps=0),
                    _hash(reference), kind="reference")]
        for entry in self.systems:
            budget = entry.budget or self.budget
            config = models.config_for(entry.system, entry.preset, entry.override_strings())
            digest = _hash({
                "system": entry.system, "preset": entry.preset, "config": config.to_dict(),
                "budget": budget.identity(), **self.shared_settings(),
            })
            for seed in self.seeds:
                jobs.append(Job(f"{entry.variant}_seed{seed}", entry.system, entry.variant, entry.preset, seed,
                                tuple(entry.override_strings()), budget, digest))
        return jobs

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Suite":
        """The inverse of `to_dict` (executors pass a suite to job processes as plain data)."""
        values = dict(data)
        values["budget"] = Budget.from_dict(values["budget"])
        values["evaluation"] = Evaluation(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in values["evaluation"].items()})
        values["executor"] = ExecutorSpec(**values["executor"])
        values["seeds"] = tuple(values["seeds"])
        values["val_metrics"] = tuple(values["val_metrics"])
        values["corpus_options"] = tuple(tuple(o) for o in values["corpus_options"])
        values["thresholds"] = tuple(tuple(t) for t in values["thresholds"])
        values["claims"] = tuple((c, tuple(tuple(r) for r in roles)) for c, roles in values["claims"])
        values["peers"] = tuple(tuple(pair) for pair in values.get("peers", ()))
        values["systems"] = tuple(
            SystemEntry(s["system"], s["variant"], s["preset"], tuple(tuple(o) for o in s["overrides"]),
                        Budget.from_dict(s["budget"]) if s["budget"] else None)
            for s in values["systems"]
        )
        return cls(**values)


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Loading with line numbers


MAX_YAML_VALUES = 100_000  # a suite has hundreds; aliases that expand past this are a "billion laughs"


class _YAMLReader:
    """YAML nodes -> plain Python, recording the line of every key path (1-based) and every key
    that repeats in its mapping (plain YAML loading would keep the last one silently).

    Aliases are expanded with a bound on the values produced and refused when they refer to
    themselves, so a hostile suite costs at most MAX_YAML_VALUES values, not the machine."""

    def __init__(self, file: Path):
        self.file = file
        self.lines: dict[tuple, int] = {}
        self.duplicates: list[tuple] = []
        self.values = 0
        self.open: set[int] = set()  # ids of the collection nodes being expanded

    def plain(self, node: yaml.Node, path: tuple) -> Any:
        self.lines[path] = node.start_mark.line + 1
        self.values += 1
        if self.values > MAX_YAML_VALUES:
            raise SuiteError([f"{self.file}:{node.start_mark.line + 1}: YAML aliases expand to more than "
                              f"{MAX_YAML_VALUES:,} values; write the values out"])
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return yaml.safe_load(yaml.serialize(node))
        if id(node) in self.open:
            raise SuiteError([f"{self.file}:{node.start_mark.line + 1}: a YAML alias refers to its own value"])
        self.open.add(id(node))
        try:
            return self._mapping(node, path) if isinstance(node, yaml.MappingNode) else [
                self.plain(item, path + (i,)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        out = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if key in out:
                self.duplicates.append(path + (key,))
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = self.plain(value_node, path + (key,))
        return out


def _explicit_tags(text: str, file: Path) -> list[str]:
    """Every explicit YAML tag (`!!python/object`, `!custom`, ...): a suite is plain data, and
    a tag would otherwise be dropped without a word."""
    return [f"{file}:{event.start_mark.line + 1}: YAML tag {event.tag!r} is not allowed in a suite (plain values only)"
            for event in yaml.parse(text) if getattr(event, "tag", None) is not None]


class Validated(NamedTuple):
    """The suite's validation settings a budget's `until` and `confirm` are checked against."""

    every: int
    metrics: tuple[str, ...]
    utterances: int


class _Checker:
    """Collects problems as `FILE:LINE: key.path: message`."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines, self.problems = path, lines, []
        self.validated = Validated(Suite.val_every, (), Suite.val_utterances)

    def add(self, where: tuple, message: str) -> None:
        probe = where
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe, 1)
        key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in where).replace(".[", "[")
        self.problems.append(f"{self.path}:{line}: {key or '(top)'}: {message}")

    def mapping(self, value: Any, where: tuple, allowed: Sequence[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(where, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                self.add(where + (key,), f"unknown key (allowed: {', '.join(allowed)})")
        return value

    def number(self, value: Any, where: tuple, kind: type, minimum: float, optional: bool = False,
               maximum: float = math.inf) -> Any:
        """`value` as `kind` if it is a finite number in [minimum, maximum]; else a problem."""
        if value is None and optional:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)
        if kind is int:
            ok = ok and (isinstance(value, int) or value.is_integer())
        if not ok or not minimum <= value <= maximum:
            what = "an integer" if kind is int else "a finite number"
            bound = "" if minimum == -math.inf else f" >= {minimum}" if maximum == math.inf else \
                f" from {minimum} to {maximum:,}"
            self.add(where, f"expected {what}{bound}, got {value!r}")
            return None
        return kind(value)

    def choice(self, value: Any, where: tuple, choices: Sequence[str]) -> Any:
        if value not in choices:
            self.add(where, f"expected one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def metric_names(self, value: Any, where: tuple, known: Mapping[str, Any]) -> tuple[str, ...] | None:
        """A list of measure names from `known`, or "all"."""
        if value == "all":
            return tuple(known)
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            self.add(where, "expected a list of metric names or 'all'")
            return None
        for i, name in enumerate(value):
            if name not in known:
                self.add(where + (i,), f"unknown metric {name!r} (known: {', '.join(known)})")
        return tuple(value)

    def budget(self, value: Any, where: tuple) -> Budget | None:
        data = self.mapping(value, where, ("steps", "minutes", "until", "consecutive", "confirm"))
        steps = self.number(data.get("steps"), where + ("steps",), int, 1, optional=True)
        minutes = self.number(data.get("minutes"), where + ("minutes",), float, 0.01, optional=True)
        until = self.target(data.get("until"), where + ("until",))
        consecutive = self.number(data.get("consecutive", 1), where + ("consecutive",), int, 1)
        confirm = self.confirmation(data, where)
        if steps is None and minutes is None:
            if "steps" not in data and "minutes" not in data:
                self.add(where, "a budget needs steps, minutes or both (with `until`, they are the cap)")
            return None
        return Budget(steps, minutes, until, consecutive or 1, confirm)

    def confirmation(self, data: Mapping[str, Any], where: tuple) -> int:
        """`confirm`: how many validation utterances confirm a target (0: none)."""
        if data.get("confirm") is None:
            return 0
        confirm = self.number(data["confirm"], where + ("confirm",), int, 1)
        if confirm is None:
            return 0
        utterances = self.validated.utterances
        if "until" not in data:
            self.add(where + ("confirm",), "confirms a quality target: add `until`")
        elif confirm <= utterances:
            self.add(where + ("confirm",), f"{confirm} must exceed validation.utterances ({utterances}): "
                                           "it scores more utterances than a validation does")
        return confirm

    def target(self, value: Any, where: tuple) -> tuple[tuple[str, float], ...]:
        """`until`: validation measure -> threshold, each measure one whose direction is known."""
        if value is None:
            return ()
        data = self.mapping(value, where, tuple(value) if isinstance(value, dict) else ())
        if isinstance(value, dict) and not value:
            self.add(where, "expected at least one measure, e.g. {wer: 0.2}")
        every, scored = self.validated.every, self.validated.metrics
        if data and not every:
            self.add(where, "a quality target needs validation (validation.every > 0)")
        target = []
        for metric, threshold in data.items():
            if metric not in VALIDATION_MEASURES and metric not in METRICS:
                self.add(where + (metric,), f"not a validation measure (known: {', '.join(VALIDATION_MEASURES)}, "
                                            f"or a quality metric named in validation.metrics)")
                continue
            if metric in METRICS and metric not in scored:
                self.add(where + (metric,), f"{metric} is not scored during training: add it to validation.metrics")
                continue
            number = self.number(threshold, where + (metric,), float, -math.inf)
            if number is not None:
                target.append((str(metric), number))
        return tuple(target)


TOP_KEYS = ("name", "description", "corpus", "seeds", "device", "threads", "budget", "log_every", "checkpoint_every",
            "validation", "evaluation", "vocoder", "tracking", "thresholds", "price_per_hour", "executor", "systems", "claims",
            "peers")


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; raises SuiteError listing every problem."""
    path = Path(path)
    raw, lines, duplicates = _read_yaml(path)
    check = _Checker(path, lines)
    for where in duplicates:
        check.add(where, "key repeats in this mapping (YAML keeps only the last; remove one)")
    data = check.mapping(raw, (), TOP_KEYS)
    values: dict[str, Any] = {"name": str(data.get("name", path.stem)), "path": str(path)}
    if not _plain_name(values["name"]):
        check.add(("name",) if "name" in data else (), f"suite name {values['name']!r}: use letters, digits, '-', '_' "
                  "or '.' only (it names run folders and README blocks)")
    values.update(_validation(check, data.get("validation")))  # first: a budget's `until` reads it
    check.validated = Validated(values.get("val_every", Suite.val_every), values.get("val_metrics") or (),
                                values.get("val_utterances", Suite.val_utterances))
    values.update(_run_settings(check, data))
    values["evaluation"] = _evaluation(check, data.get("evaluation"))
    values["thresholds"] = _thresholds(check, data.get("thresholds"))
    values["executor"] = _executor(check, data.get("executor"))
    values["systems"] = _systems(check, data.get("systems"))
    variants = [e.variant for e in values["systems"]]
    values["claims"] = _claims(check, data.get("claims"), variants)
    values["peers"] = _peers(check, data.get("peers"), variants)
    if check.problems:
        raise SuiteError(check.problems)
    return Suite(**{k: v for k, v in values.items() if v is not None})


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int], list[tuple]]:
    """The file as plain data, the line of every key path, and the paths of repeated keys."""
    try:
        text = path.read_text("utf-8")
    except OSError as err:
        raise SuiteError([f"{path}: cannot read the suite file ({err.strerror or err})"]) from None
    except UnicodeDecodeError as err:
        raise SuiteError([f"{path}: not UTF-8 text ({err.reason} at byte {err.start})"]) from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise SuiteError([f"{path}:{line}: not valid YAML: {getattr(err, 'problem', err)}"]) from None
    if tags := _explicit_tags(text, path):
        raise SuiteError(tags)
    reader = _YAMLReader(path)
    raw = reader.plain(node, ()) if node is not None else {}
    return raw, reader.lines, reader.duplicates


def _run_settings(check: _Checker, data: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level scalars: description, corpus, seeds, device, threads, budget, intervals, price."""
    values: dict[str, Any] = {}
    if "description" in data:
        values["description"] = str(data["description"])
    if "corpus" in data:
        values.update(_corpus(check, data["corpus"]))
    if "seeds" in data:
        seeds = data["seeds"]
        if not isinstance(seeds, list) or not seeds:
            check.add(("seeds",), "expected a non-empty list of integers")
        else:
            parsed = [check.number(s, ("seeds", i), int, 0, maximum=MAX_SEED) for i, s in enumerate(seeds)]
            if len(set(parsed)) != len(parsed):
                check.add(("seeds",), "seeds repeat")
            values["seeds"] = tuple(s for s in parsed if s is not None)
    if "device" in data:
        values["device"] = check.choice(data["device"], ("device",), DEVICES)
    if "vocoder" in data:
        values["vocoder"] = check.choice(data["vocoder"], ("vocoder",), VOCODERS)
    if "tracking" in data:
        values["tracking"] = check.choice(data["tracking"], ("tracking",), TRACKERS)
    if "threads" in data:
        values["threads"] = check.number(data["threads"], ("threads",), int, 1, optional=True)
    if "budget" in data:
        values["budget"] = check.budget(data["budget"], ("budget",))
    for key in ("log_every", "checkpoint_every"):
        if key in data:
            values[key] = check.number(data[key], (key,), int, 1)
    if "price_per_hour" in data:
        values["price_per_hour"] = check.number(data["price_per_hour"], ("price_per_hour",), float, 0)
    return values


def _validation(check: _Checker, value: Any) -> dict[str, Any]:
    validation = check.mapping(value, ("validation",), ("every", "utterances", "metrics"))
    values: dict[str, Any] = {}
    if "every" in validation:
        values["val_every"] = check.number(validation["every"], ("validation", "every"), int, 0)
    if "utterances" in validation:
        values["val_utterances"] = check.number(validation["utterances"], ("validation", "utterances"), int, 1)
    if "metrics" in validation:
        values["val_metrics"] = check.metric_names(validation["metrics"], ("validation", "metrics"), METRICS)
    return values


def _evaluation(check: _Checker, value: Any) -> Evaluation:
    evaluation = check.mapping(value, ("evaluation",), tuple(Evaluation.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key in ("utterances", "rtf_sentences", "rtf_repeats", "hard_sentences", "audio_samples"):
        if key in evaluation:
            minimum = 1 if key in ("utterances", "rtf_repeats") else 0
            values[key] = check.number(evaluation[key], ("evaluation", key), int, minimum)
    if "metrics" in evaluation:
        values["metrics"] = check.metric_names(evaluation["metrics"], ("evaluation", "metrics"), METRICS)
    return Evaluation(**{k: v for k, v in values.items() if v is not None})


def _thresholds(check: _Checker, value: Any) -> tuple[tuple[str, float], ...]:
    merged = dict(Suite.__dataclass_fields__["thresholds"].default)
    for key, given in check.mapping(value, ("thresholds",), tuple(merged)).items():
        number = check.number(given, ("thresholds", key), float, 0)
        if number is not None and key in merged:
            merged[key] = number
    return tuple(merged.items())


def _executor(check: _Checker, value: Any) -> ExecutorSpec:
    executor = check.mapping(value, ("executor",), tuple(ExecutorSpec.__dataclass_fields__))
    values: dict[str, Any] = {}
    if "type" in executor:
        values["type"] = check.choice(executor["type"], ("executor", "type"), EXECUTOR_TYPES)
    for key, kind, minimum in (("parallel", int, 1), ("retries", int, 0), ("cpus_per_job", float, 0),
                               ("gpus_per_job", float, 0)):
        if key in executor:
            values[key] = check.number(executor[key], ("executor", key), kind, minimum)
    if "time_limit" in executor:
        values["time_limit"] = check.number(executor["time_limit"], ("executor", "time_limit"), float, 1)
    for key in ("address", "partition"):
        if executor.get(key) is not None:
            values[key] = str(executor[key])
    return ExecutorSpec(**{k: v for k, v in values.items() if v is not None})


def _systems(check: _Checker, systems: Any) -> tuple[SystemEntry, ...]:
    """Every valid entry; a repeated variant is named at the entry that repeats it."""
    if not isinstance(systems, list) or not systems:
        check.add(("systems",), "expected a non-empty list of systems")
        return ()
    entries: list[tuple[int, SystemEntry]] = []
    for i, item in enumerate(systems):
        entry = _system_entry(check, ("systems", i), item)
        if entry is not None:
            entries.append((i, entry))
    seen: set[str] = set()
    for position, entry in entries:
        if entry.variant in seen:
            check.add(("systems", position, "variant"),
                      f"variant {entry.variant!r} repeats; give each entry its own `variant`")
        seen.add(entry.variant)
    if REFERENCE_VARIANT in seen:
        check.add(("systems",), f"{REFERENCE_VARIANT!r} is reserved for the reference recordings")
    return tuple(entry for _, entry in entries)


def _system_entry(check: _Checker, where: tuple, item: Any) -> SystemEntry | None:
    item = check.mapping(item, where, ("system", "variant", "preset", "set", "budget"))
    name = item.get("system")
    known = models.names()
    if name not in known:
        check.add(where + ("system",), f"unknown system {name!r} (registered: {', '.join(known)})")
        return None
    preset = check.choice(item.get("preset", "tiny"), where + ("preset",), PRESETS) or "tiny"
    overrides = check.mapping(item.get("set"), where + ("set",), _config_keys(name))
    entry = SystemEntry(
        system=name,
        variant=str(item.get("variant", name)),
        preset=preset,
        overrides=tuple(overrides.items()),
        budget=check.budget(item["budget"], where + ("budget",)) if "budget" in item else None,
    )
    problems = models.override_problems(name, preset, dict(entry.overrides))
    for key, problem in problems.items():
        check.add(where + ("set", key), problem)
    if problems:
        return None
    if not _plain_name(entry.variant):
        check.add(where + ("variant",), "use letters, digits, '-', '_' or '.' only (it names a folder)")
    return entry


def _plain_name(name: str) -> bool:
    """Letters, digits, '-', '_' and '.': safe in a folder name, a run id and Markdown."""
    return name.isascii() and name.replace("-", "").replace("_", "").replace(".", "").isalnum()


def _claims(check: _Checker, value: Any, variants: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    claims = check.mapping(value, ("claims",), tuple(CLAIMS))
    for claim, roles in claims.items():
        if claim not in CLAIMS:
            continue
        needed = CLAIMS[claim][0]
        roles = check.mapping(roles, ("claims", claim), needed)
        for role in needed:
            if role not in roles:
                check.add(("claims", claim), f"needs a variant for {role!r}")
            elif roles[role] not in variants:
                check.add(("claims", claim, role), f"no system entry has variant {roles[role]!r}")
    return tuple((claim, tuple(sorted(roles.items()))) for claim, roles in claims.items() if isinstance(roles, dict))


def _peers(check: _Checker, value: Any, variants: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`{ours: theirs}`: both must be variants of the suite."""
    peers = check.mapping(value, ("peers",), variants)
    for ours, theirs in peers.items():
        if theirs not in variants:
            check.add(("peers", ours), f"no system entry has variant {theirs!r}")
    return tuple((str(ours), str(theirs)) for ours, theirs in peers.items())


CORPUS_OPTION_TYPES = {"count": int, "seed": int, "min_chars": int, "max_chars": int}


def _corpus(check: _Checker, value: Any) -> dict[str, Any]:
    """`corpus: NAME_OR_PATH`, or `corpus: {kind: digits, count: ..., seed: ...}` for a synthetic one."""
    if not isinstance(value, dict):
        return {"corpus": str(value)}
    options = check.mapping(value, ("corpus",), ("kind", *CORPUS_OPTION_TYPES))
    kind = check.choice(options.get("kind"), ("corpus", "kind"), CORPUS_KINDS)
    parsed = {key: check.number(v, ("corpus", key), CORPUS_OPTION_TYPES[key], 0)
              for key, v in options.items() if key in CORPUS_OPTION_TYPES}
    try:
        CorpusSpec.default(kind or CORPUS_KINDS[0], **{k: v for k, v in parsed.items() if v is not None})
    except ValueError as err:
        check.add(("corpus",), str(err))
    return {"corpus": kind or CORPUS_KINDS[0], "corpus_options": tuple(sorted(parsed.items()))}


def _config_keys(system: str) -> tuple[str, ...]:
    """Top-level config fields and `audio.*` keys a suite may override."""
    fields = tuple(models.get(system).Config.__dataclass_fields__)
    return fields + tuple(f"audio.{name}" for name in AudioConfig.__dataclass_fields__)
