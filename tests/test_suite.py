"""Suite files: validation with file:line errors, the job matrix and config hashes, the run store."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from ttsbench.errors import RunStoreError
from ttsbench.results import RunStore
from ttsbench.suite import Budget, Job, Suite, SuiteError, load_suite

SUITES = Path(__file__).resolve().parents[1] / "suites"


@pytest.mark.parametrize("name", ["smoke.yaml", "cpu.yaml", "cpu-lj.yaml", "claims.yaml", "ljspeech-gpu.yaml"])
# peer-learn.yaml names the coqui plugin's systems: it loads where the plugin is installed (make peer-learn)
def test_shipped_suites_load(name):
    suite = load_suite(SUITES / name)
    jobs = suite.jobs()
    assert jobs[0].kind == "reference"
    assert len(jobs) == 1 + len(suite.systems) * len(suite.seeds)
    assert len({j.id for j in jobs}) == len(jobs)


def test_smoke_covers_every_system():
    from ttsbench import models

    assert {e.system for e in load_suite(SUITES / "smoke.yaml").systems} == set(models.names())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text, "utf-8")
    return path


def test_a_synthetic_corpus_is_named_with_its_options_and_shapes_the_hash(tmp_path):
    from ttsbench.synthetic import corpus_cache_path

    systems = "systems:\n  - {system: glow-tts}\n"
    digits = load_suite(write(tmp_path, "corpus: {kind: digits, count: 60, seed: 2}\n" + systems))
    spec = digits.corpus_spec()
    assert (spec.kind, spec.count, spec.seed) == ("digits", 60, 2)
    assert digits.corpus_location() == str(corpus_cache_path(spec))
    assert digits.hard_sentence_set()[0][0].startswith("DIGHARD")
    other = load_suite(write(tmp_path, "corpus: {kind: digits, count: 61, seed: 2}\n" + systems))
    assert other.jobs()[1].config_hash != digits.jobs()[1].config_hash
    assert load_suite(write(tmp_path, "corpus: lj-text\n" + systems)).corpus_spec().kind == "lj-text"
    with pytest.raises(SuiteError) as err:
        load_suite(write(tmp_path, "corpus:\n  kind: digits\n  count: many\n  colour: red\n" + systems))
    message = str(err.value)
    assert "suite.yaml:3: corpus.count" in message and "suite.yaml:4: corpus.colour: unknown key" in message


def test_every_problem_is_named_with_its_line(tmp_path):
    path = write(tmp_path, """\
name: broken
seeds: [0, 0]
budget: {stepz: 3}
evaluation:
  metrics: [mcd, loudness]
systems:
  - system: glow-tts
    set: {hidden_channelz: 3}
  - system: no-such-tts
  - system: dc-tts
    variant: twin
  - system: rl-duration
    variant: twin
claims:
  sniper: {sniper: fs2}
peers:
  glow-tts: coqui-glow
  nobody: dc-tts
""")
    with pytest.raises(SuiteError) as caught:
        load_suite(path)
    problems = caught.value.problems
    text = "\n".join(problems)
    assert f"{path}:2: seeds: seeds repeat" in text
    assert f"{path}:3: budget.stepz: unknown key" in text
    assert f"{path}:5: evaluation.metrics[1]: unknown metric 'loudness'" in text
    assert f"{path}:8: systems[0].set.hidden_channelz: unknown key" in text
    assert f"{path}:9: systems[1].system: unknown system 'no-such-tts'" in text
    assert f"{path}:13: systems[3].variant: variant 'twin' repeats" in text
    assert f"{path}:15: claims.sniper: needs a variant for 'dense'" in text
    assert f"{path}:15: claims.sniper.sniper: no system entry has variant 'fs2'" in text
    assert f"{path}:17: peers.glow-tts: no system entry has variant 'coqui-glow'" in text
    assert f"{path}:18: peers.nobody: unknown key" in text


def test_invalid_override_value_and_yaml_syntax(tmp_path):
    with pytest.raises(SuiteError, match=r"suite.yaml:3: systems\[0\].set.sparsity_variant: invalid override: "
                       r"sparsity_variant needs one of 'dense', 'constant', 'sniper', got 'sometimes'"):
        load_suite(write(tmp_path, "systems:\n  - system: fastspeech2-sniper\n    set: {sparsity_variant: sometimes}\n"))
    with pytest.raises(SuiteError, match=r"suite.yaml:2: not valid YAML"):
        load_suite(write(tmp_path, "seeds: [0]\nsystems:\t- glow-tts\n"))


def test_config_hash_follows_what_shapes_the_numbers(tmp_path):
    base = "seeds: [0, 1]\nbudget: {steps: 10}\nsystems:\n  - {system: glow-tts%s}\n"
    plain = load_suite(write(tmp_path, base % "")).jobs()
    assert plain[1].config_hash == plain[2].config_hash  # seeds share a recipe; the seed is its own column
    changed = load_suite(write(tmp_path, base % ", set: {hidden_channels: 32}")).jobs()
    assert changed[1].config_hash != plain[1].config_hash
    longer = load_suite(write(tmp_path, base.replace("steps: 10", "steps: 11") % "")).jobs()
    assert longer[1].config_hash != plain[1].config_hash
    # the description does not change any number
    described = load_suite(write(tmp_path, "description: hello\n" + base % "")).jobs()
    assert described[1].config_hash == plain[1].config_hash
    # scoring MCD during validation adds rows, so it is a different recipe
    scored = load_suite(write(tmp_path, "validation: {metrics: [mcd]}\n" + base % ""))
    assert scored.val_metrics == ("mcd",)
    assert scored.jobs()[1].config_hash != plain[1].config_hash
    with pytest.raises(SuiteError, match=r"suite.yaml:1: validation.metrics\[1\]: unknown metric 'mdc'"):
        load_suite(write(tmp_path, "validation: {metrics: [mcd, mdc]}\n" + base % ""))


def test_the_vocoder_is_chosen_checked_hashed_and_gives_the_ceilings(tmp_path):
    systems = "budget: {steps: 10}\nsystems:\n  - {system: glow-tts}\n"
    default = load_suite(write(tmp_path, systems))
    assert default.vocoder == "hifigan-universal" and default.vocoders_used() == ["hifigan-universal"]
    chosen = load_suite(write(tmp_path, "vocoder: griffin-lim\n" + systems))
    assert chosen.vocoders_used() == ["griffin-lim"]
    assert [j.config_hash for j in chosen.jobs()] != [j.config_hash for j in default.jobs()]
    # DC-TTS's mel is not HiFi-GAN's: it is heard through Griffin-Lim, so both ceilings are needed
    mixed = load_suite(write(tmp_path, systems + "  - {system: dc-tts}\n"))
    assert mixed.vocoders_used() == ["griffin-lim", "hifigan-universal"]
    assert mixed.jobs()[0].config_hash != default.jobs()[0].config_hash  # the reference job scores both
    with pytest.raises(SuiteError, match=r"suite.yaml:1: vocoder: expected one of .*hifigan-universal, got .wavenet."):
        load_suite(write(tmp_path, "vocoder: wavenet\n" + systems))


def test_a_quality_target_in_the_budget_is_parsed_checked_and_hashed(tmp_path):
    base = "validation: {every: 5, metrics: [wer]}\nseeds: [0]\nbudget: %s\nsystems:\n  - {system: glow-tts}\n"
    capped = load_suite(write(tmp_path, base % "{minutes: 2}"))
    suite = load_suite(write(tmp_path, base % "{minutes: 2, until: {wer: 0.2, diagonal_score: 0.5}, consecutive: 2}"))
    assert suite.budget == Budget(minutes=2, until=(("wer", 0.2), ("diagonal_score", 0.5)), consecutive=2)
    [job] = suite.jobs()[1:]
    assert job.config_hash != capped.jobs()[1].config_hash  # stopping early changes the numbers
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job  # executors pass jobs as JSON
    assert Suite.from_dict(suite.to_dict()).budget == suite.budget
    # a budget without a target hashes as it always did (runs made before targets existed resume)
    assert capped.budget.identity() == {"steps": None, "minutes": 2.0}
    confirmed = load_suite(write(tmp_path, base % "{minutes: 2, until: {wer: 0.2}, confirm: 20}"))
    assert confirmed.budget.confirm == 20 and Suite.from_dict(confirmed.to_dict()).budget == confirmed.budget
    assert confirmed.jobs()[1].config_hash != load_suite(write(tmp_path, base % "{minutes: 2, until: {wer: 0.2}}")
                                                         ).jobs()[1].config_hash
    problems = {
        "{until: {wer: 0.2}}": "suite.yaml:3: budget: a budget needs steps, minutes or both",
        "{steps: 9, until: {mcd: 8}}": "budget.until.mcd: mcd is not scored during training: add it to validation.metrics",
        "{steps: 9, until: {wr: 0.2}}": "budget.until.wr: not a validation measure",
        "{steps: 9, until: {wer: low}}": "budget.until.wer: expected a finite number, got 'low'",
        "{steps: 9, until: {wer: 0.2}, consecutive: 0}": "budget.consecutive: expected an integer >= 1",
        "{steps: 9, until: {wer: 0.2}, confirm: 2}": "budget.confirm: 2 must exceed validation.utterances (2)",
        "{steps: 9, confirm: 20}": "budget.confirm: confirms a quality target: add `until`",
    }
    for budget, message in problems.items():
        with pytest.raises(SuiteError, match=re.escape(message)):
            load_suite(write(tmp_path, base % budget))
    with pytest.raises(SuiteError, match=re.escape("budget.until: a quality target needs validation")):
        load_suite(write(tmp_path, (base % "{steps: 9, until: {mel_l1_dtw: 1}}").replace("every: 5", "every: 0")))


def test_overrides_that_must_agree_are_checked_together(tmp_path):
    # alone, n_fft 512 is below DC-TTS's tiny win_length 1024; with win_length 512 beside it, it is valid
    agreed = "systems:\n  - {system: dc-tts, set: {audio.win_length: 512, audio.n_fft: 512}}\n"
    [entry] = load_suite(write(tmp_path, agreed)).systems
    assert dict(entry.overrides) == {"audio.win_length": 512, "audio.n_fft": 512}
    with pytest.raises(SuiteError, match=r"systems\[0\].set.audio.n_fft: invalid override: .*win_length 1024 > n_fft 512"):
        load_suite(write(tmp_path, "systems:\n  - {system: dc-tts, set: {audio.n_fft: 512}}\n"))


def store_with_run(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.open({"name": "t"}, {"device": "cpu"})
    return store


JOB = {"id": "glow_seed0", "system": "glow-tts", "variant": "glow", "seed": 0, "config_hash": "abc"}


def test_store_replaces_a_jobs_rows_instead_of_duplicating(tmp_path):
    store = store_with_run(tmp_path)
    other = {**JOB, "id": "glow_seed1", "seed": 1}
    store.record(other, "finished", [{"metric": "val/mel_l1_dtw", "value": 2.0, "step": 4}])
    store.record(JOB, "finished", [{"metric": "val/mel_l1_dtw", "value": 1.0, "step": 4}])
    store.record(JOB, "finished", [{"metric": "val/mel_l1_dtw", "value": 1.5, "step": 4}])
    results = store.results()
    assert len(results) == 2
    assert results.set_index("job").loc["glow_seed0", "value"] == 1.5
    assert store.is_done("glow_seed0", "abc") and not store.is_done("glow_seed2", "abc")
    with pytest.raises(ValueError, match="use a new --out folder"):
        store.is_done("glow_seed0", "def")


def test_missing_torn_or_edited_rows_make_a_done_job_pending(tmp_path):
    store = store_with_run(tmp_path)
    rows = [{"metric": "eval/mcd", "value": float(v), "item": f"u{v}"} for v in range(5)]
    store.record(JOB, "finished", rows)
    lines = store.results_path.read_text("utf-8").splitlines(keepends=True)
    assert RunStore(store.root).is_done(JOB["id"], "abc")
    for damage in ("".join(lines[:3]), "", lines[0].replace("0.0", "7.0") + "".join(lines[1:])):
        store.results_path.write_text(damage, "utf-8")
        fresh = RunStore(store.root)
        fresh.results()
        assert not fresh.is_done(JOB["id"], "abc"), damage
        assert fresh.incomplete[0].startswith(f"{JOB['id']}: ") and "it runs again" in fresh.incomplete[0]
    store.results_path.unlink()  # a deleted results file: the same
    assert not RunStore(store.root).is_done(JOB["id"], "abc")


def test_a_failed_retry_keeps_the_rows_an_earlier_attempt_stored(tmp_path):
    store = store_with_run(tmp_path)
    store.record(JOB, "finished", [{"metric": "eval/mcd", "value": 5.0}, {"metric": "eval/wer", "value": 0.1}])
    before = store.results_path.read_bytes()
    store.record(JOB, "failed", [], error="the corpus changed")
    assert store.results_path.read_bytes() == before
    assert store.jobs()[JOB["id"]]["state"] == "failed" and store.jobs()[JOB["id"]]["rows"] == 2


def test_store_keeps_nan_and_inf_readable(tmp_path):
    store = store_with_run(tmp_path)
    store.record(JOB, "finished", [{"metric": "a", "value": math.nan}, {"metric": "b", "value": math.inf}])
    for line in store.results_path.read_text("utf-8").splitlines():
        json.loads(line)  # strict JSON: no bare NaN or Infinity
    values = store.results().set_index("metric")["value"]
    assert math.isnan(values["a"]) and values["b"] == math.inf


def test_store_rejects_rows_without_metric_or_value(tmp_path):
    store = store_with_run(tmp_path)
    with pytest.raises(ValueError, match="lacks value"):
        store.record(JOB, "finished", [{"metric": "a"}])
    assert not store.results_path.exists()  # nothing half-written


def test_set_values_are_type_checked_naming_the_key(tmp_path):
    suite = ("systems:\n  - system: glow-tts\n    set:\n      batch_size: sixteen\n"
             "      learning_rate: fast\n      audio.n_fft: 1024.5\n")
    with pytest.raises(SuiteError) as raised:
        load_suite(write(tmp_path, suite))
    text = str(raised.value)
    assert "suite.yaml:4: systems[0].set.batch_size: invalid override: batch_size needs an integer, got 'sixteen'" in text
    assert "suite.yaml:5: systems[0].set.learning_rate: invalid override: learning_rate needs a number" in text
    assert "suite.yaml:6: systems[0].set.audio.n_fft: invalid override: audio.n_fft needs an integer" in text


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    suite = "budget: {steps: 10}\nbudget: {steps: 20}\nsystems:\n  - {system: glow-tts, set: {batch_size: 2, batch_size: 4}}\n"
    with pytest.raises(SuiteError) as raised:
        load_suite(write(tmp_path, suite))
    text = str(raised.value)
    assert "suite.yaml:2: budget: key repeats in this mapping" in text
    assert "suite.yaml:4: systems[0].set.batch_size: key repeats" in text


def test_suite_round_trips_through_plain_data(tmp_path):
    suite = load_suite(SUITES / "claims.yaml")
    assert Suite.from_dict(suite.to_dict()) == suite


def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_store_tolerates_a_torn_last_line_and_names_a_damaged_one(tmp_path):
    store = store_with_run(tmp_path)
    store.record(JOB, "finished", [{"metric": "a", "value": 1.0}, {"metric": "b", "value": 2.0}])
    good = store.results_path.read_text("utf-8")
    store.results_path.write_text(good + '{"job": "glow_seed0", "metr', "utf-8")  # cut mid-write
    assert list(store.results()["metric"]) == ["a", "b"]
    lines = good.splitlines()
    store.results_path.write_text(lines[0] + "\n" + lines[1][:40] + "}\n", "utf-8")  # complete, but damaged
    with pytest.raises(RunStoreError, match=r"(?s)results.jsonl:2: damaged row: not JSON .*--skip-damaged"):
        store.results()
    skipping = RunStore(store.root, skip_damaged=True)
    assert len(skipping.results()) == 1 and "results.jsonl:2" in skipping.damaged[0]
    assert not skipping.is_done(JOB["id"], JOB["config_hash"])  # its rows were damaged: it runs again


def test_store_refuses_another_suite_before_writing(tmp_path):
    store = store_with_run(tmp_path)
    store.record(JOB, "finished", [{"metric": "a", "value": 1.0}])
    before = _folder_bytes(store.root)
    with pytest.raises(RunStoreError, match="holds a run of suite 't', not 'other'"):
        store.check_compatible({"name": "other"}, [JOB])
    with pytest.raises(RunStoreError, match="was run with config abc"):
        store.check_compatible({"name": "t"}, [{**JOB, "config_hash": "xyz"}])
    assert _folder_bytes(store.root) == before
