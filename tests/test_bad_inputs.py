"""Bad inputs and faults, as a new user meets them: one clear line, exit 2, never a traceback.

Each case runs the real command line in-process (`ttsbench.cli.main`) and checks its exit code,
that the message names the culprit (file, option or field) and says what is wrong, and that no
"Traceback" reaches the user. The pickle payload of one case would create a file if it ran.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ttsbench import cli, models
from ttsbench.commands import training
from ttsbench.data import embedded_corpus_path

MARKER = Path("/tmp/ttsbench-pickle-payload-ran")
SMOKE = str(Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml")


class _Payload:
    """Unpickling this runs `touch MARKER`; a weights-only load must refuse it unrun."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Exit code and everything printed (stdout and stderr) by `ttsbench ARGV`."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse refusing an option value
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_refused(code: int, output: str, *fragments: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, (fragment, output)


@pytest.fixture(scope="module")
def glow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: glow-tts trained for 2 steps on the embedded corpus."""
    out = tmp_path_factory.mktemp("glow")
    assert cli.main(["train", "glow-tts", "--steps", "2", "--val-every", "0", "--quiet", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _truncated(tmp: Path, good: Path) -> Path:
    data = good.read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    return tmp / "cut.pt"


def _relabelled(tmp: Path, good: Path) -> Path:
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["system"] = "tacotron-gradual"
    checkpoint["config"] = models.get("tacotron-gradual").Config.tiny().to_dict()
    torch.save(checkpoint, tmp / "relabelled.pt")
    return tmp / "relabelled.pt"


def _foreign(tmp: Path, good: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign.pt")
    return tmp / "foreign.pt"


def _payload(tmp: Path, good: Path) -> Path:
    torch.save({"system": "glow-tts", "config": {}, "model": {}, "step": 0, "x": _Payload()}, tmp / "evil.pt")
    return tmp / "evil.pt"


def _edited(tmp: Path, good: Path, nan_weights: bool = False, hop_length: int | None = None) -> Path:
    checkpoint = torch.load(good, weights_only=True)
    if nan_weights:
        name = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
        checkpoint["model"][name] = torch.full_like(checkpoint["model"][name], float("nan"))
    if hop_length is not None:
        checkpoint["config"]["audio"]["hop_length"] = hop_length
    torch.save(checkpoint, tmp / "edited.pt")
    return tmp / "edited.pt"


CHECKPOINT_CASES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "missing": (lambda tmp, good: tmp / "nothing.pt", "no such checkpoint"),
    "empty": (lambda tmp, good: (tmp / "empty.pt").touch() or tmp / "empty.pt", "empty file"),
    "folder": (lambda tmp, good: tmp, "is a folder"),
    "truncated": (_truncated, "not a readable checkpoint"),
    "not ttsbench": (_foreign, "not a ttsbench checkpoint (lacks system, config, model, step)"),
    "another system relabelled": (_relabelled, "its weights do not fit system 'tacotron-gradual'"),
    "pickle payload": (_payload, "refused: it holds Python objects"),
    "NaN weights": (lambda tmp, good: _edited(tmp, good, nan_weights=True), "holds NaN or inf values"),
    "hop_length 0": (lambda tmp, good: _edited(tmp, good, hop_length=0), "hop_length must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
@pytest.mark.parametrize("command", ["synth", "speed"])
def test_bad_checkpoints_are_one_line(case, command, glow_checkpoint, tmp_path, capsys):
    make, message = CHECKPOINT_CASES[case]
    path = make(tmp_path, glow_checkpoint)
    MARKER.unlink(missing_ok=True)
    argv = ["synth", str(path), "hello", "-o", str(tmp_path / "x.wav")] if command == "synth" else \
        ["speed", str(path), "--quiet"]
    code, output = run(capsys, *argv)
    assert_refused(code, output, str(path), message)
    assert len(output.strip().splitlines()) == 1, output
    assert not MARKER.exists(), "the pickle payload ran"


def test_resuming_train_on_a_damaged_checkpoint_names_it(glow_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(glow_checkpoint.parent, out)
    _truncated(out, glow_checkpoint).replace(out / "checkpoint.pt")
    code, output = run(capsys, "train", "glow-tts", "--steps", "4", "--val-every", "0", "--quiet", "--out", str(out))
    assert_refused(code, output, str(out / "checkpoint.pt"), "not a readable checkpoint")


OPTION_CASES = {
    "--steps 0": (["train", "glow-tts", "--steps", "0"], "--steps: must be at least 1, got 0"),
    "--steps -1": (["train", "glow-tts", "--steps", "-1"], "--steps: must be at least 1, got -1"),
    "--log-every 0": (["train", "glow-tts", "--log-every", "0"], "--log-every: must be at least 1"),
    "--checkpoint-every 0": (["train", "glow-tts", "--checkpoint-every", "0"], "--checkpoint-every: must be at least 1"),
    "--steps ten": (["train", "glow-tts", "--steps", "ten"], "--steps: expected an integer, got 'ten'"),
    "--retries -1": (["run", SMOKE, "--retries", "-1"], "--retries: must be at least 0"),
    "--parallel 0": (["run", SMOKE, "--parallel", "0"], "--parallel: must be at least 1"),
    "--repeats 0": (["speed", "x.pt", "--repeats", "0"], "--repeats: must be at least 1"),
    "--seed 2^70": (["train", "glow-tts", "--seed", str(2**70)], "--seed: must be from 0 to 4,294,967,295"),
    "--set batch_size=-1": (["train", "glow-tts", "--set", "batch_size=-1"], "batch_size must be at least 1, got -1"),
    "--set learning_rate=.nan": (["train", "glow-tts", "--set", "learning_rate=.nan"],
                                 "learning_rate must be a positive finite number, got nan"),
    "--set audio=5": (["train", "glow-tts", "--set", "audio=5"], "audio needs a value of type AudioConfig, got 5"),
    "--set a YAML tag": (["train", "glow-tts", "--set", "hidden_channels=!!python/object:os.system ls"],
                         "hidden_channels: '!!python/object:os.system ls' is not a plain YAML value"),
    "--set bad YAML": (["train", "glow-tts", "--set", "hidden_channels=[1,"], "is not a plain YAML value"),
    "--set audio.hop_length=0": (["train", "glow-tts", "--set", "audio.hop_length=0"],
                                 "audio.hop_length: hop_length must be a positive integer, got 0"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_option_values_are_checked_before_any_work(case, tmp_path, capsys):
    argv, message = OPTION_CASES[case]
    code, output = run(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] in ("train", "run") else []))
    assert_refused(code, output, message)
    assert not (tmp_path / "o").exists()


def test_unknown_system_and_bad_set_value(tmp_path, capsys):
    code, output = run(capsys, "train", "glow-ttz", "--out", str(tmp_path / "o"))
    assert_refused(code, output, "unknown system 'glow-ttz'; registered: dc-tts, fastspeech2-sniper")
    code, output = run(capsys, "train", "glow-tts", "--set", "batch_size=sixteen", "--out", str(tmp_path / "o"))
    assert_refused(code, output, "batch_size needs an integer, got 'sixteen'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda(tmp_path, capsys):
    code, output = run(capsys, "train", "glow-tts", "--device", "cuda", "--steps", "1", "--out", str(tmp_path / "o"))
    assert_refused(code, output, "device 'cuda' was asked for, but torch sees no CUDA device")


def test_out_naming_a_file_or_an_unwritable_place(tmp_path, capsys):
    existing = tmp_path / "file"
    existing.write_text("x")
    code, output = run(capsys, "train", "glow-tts", "--steps", "1", "--out", str(existing))
    assert_refused(code, output, f"--out {existing}: exists and is not a folder")
    code, output = run(capsys, "run", SMOKE, "--out", str(existing))
    assert_refused(code, output, f"--out {existing}: exists and is not a folder")
    code, output = run(capsys, "train", "glow-tts", "--steps", "1", "--out", str(existing / "below"))
    assert_refused(code, output, str(existing / "below"))


def test_resume_on_another_corpus_is_refused(glow_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(glow_checkpoint.parent, out)
    other = tmp_path / "corpus"
    shutil.copytree(embedded_corpus_path(), other)
    metadata = other / "metadata.csv"
    metadata.write_text(metadata.read_text("utf-8").replace("Printing", "Writing"), "utf-8")
    code, output = run(capsys, "train", "glow-tts", "--steps", "4", "--val-every", "0", "--quiet",
                       "--corpus", str(other), "--out", str(out))
    assert_refused(code, output, "resuming would mix two corpora")
    assert json.loads((out / "corpus.json").read_text("utf-8"))["path"].endswith("ljspeech-mini")


def test_exploding_loss_is_divergence_and_says_whether_a_checkpoint_exists(tmp_path, capsys, monkeypatch):
    # a loss that stays finite but grows a thousandfold per step (a huge learning rate makes today's
    # models NaN at once, which the NaN test covers): the guard must still stop the run
    cls = models.get("tacotron-gradual")
    original = cls.training_step

    def exploding(self, batch, step, *args):
        losses = original(self, batch, step, *args)
        losses["loss"] = losses["loss"] * 1000.0 ** step
        return losses

    monkeypatch.setattr(cls, "training_step", exploding)
    out = tmp_path / "run"
    code, output = run(capsys, "train", "tacotron-gradual", "--steps", "30", "--val-every", "0", "--quiet",
                       "--checkpoint-every", "1000", "--set", "max_decoder_steps=20", "--out", str(out))
    assert code == 3 and "Traceback" not in output, output
    assert "exploded" in output and "no checkpoint was written before it" in output, output
    result = json.loads((out / "result.json").read_text("utf-8"))
    assert result["state"] == "diverged" and result["checkpoint_step"] is None


def _suite(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ncorpus: embedded\nbudget: {{steps: 1}}\n{extra}"
                    "systems:\n  - {system: glow-tts}\n", "utf-8")
    return path


def test_duplicate_suite_keys_and_a_broken_corpus_fail_before_any_job(tmp_path, capsys):
    code, output = run(capsys, "run", str(_suite(tmp_path, "a", "budget: {steps: 2}\n")), "--out", str(tmp_path / "o"))
    assert_refused(code, output, "a.yaml:4: budget: key repeats in this mapping")
    broken = tmp_path / "broken"
    shutil.copytree(embedded_corpus_path(), broken)
    (broken / "wavs" / "LJ001-0002.flac").unlink()
    suite = tmp_path / "b.yaml"
    suite.write_text(_suite(tmp_path, "b").read_text("utf-8").replace("embedded", str(broken)), "utf-8")
    code, output = run(capsys, "run", str(suite), "--out", str(tmp_path / "o"))
    assert_refused(code, output, f"{broken / 'metadata.csv'}:2: missing audio")
    assert not (tmp_path / "o" / "jobs").exists()


def test_a_refused_run_leaves_the_folder_byte_identical(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "a-1", "suite": "a", "created": 0}), "utf-8")
    (out / "suite.json").write_text('{"name": "a"}\n', "utf-8")
    (out / ".lock").write_text("", "utf-8")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, output = run(capsys, "run", str(_suite(tmp_path, "b")), "--out", str(out))
    assert_refused(code, output, "holds a run of suite 'a', not 'b'")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_metadata_with_a_byte_order_mark_passes(tmp_path, capsys):
    copy = tmp_path / "corpus"
    shutil.copytree(embedded_corpus_path(), copy)
    metadata = copy / "metadata.csv"
    metadata.write_bytes(b"\xef\xbb\xbf" + metadata.read_bytes())
    code, output = run(capsys, "data", "check", str(copy))
    assert code == 0 and "utterances: 24" in output, output


def test_an_unexpected_error_is_one_line_with_the_traceback_kept(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(training, "cmd_list", broken)
    code, output = run(capsys, "list")
    assert code == 1 and "Traceback" not in output, output
    assert "unexpected ZeroDivisionError: division by zero" in output and "re-run with --debug" in output
    kept = Path(output.split("traceback in ")[1].split(",")[0])
    assert "Traceback" in kept.read_text("utf-8")


# --------------------------------------------------------------------------------------------
# Nothing a user owns is overwritten; hostile or out-of-range input is refused up front


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_corpus_make_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    mine = Path(shutil.copytree(embedded_corpus_path(), tmp_path / "mycorpus"))
    before = _tree(mine)
    code, output = run(capsys, "corpus", "make", "digits", "--count", "7", "--out", str(mine), "--quiet")
    assert_refused(code, output, f"--out {mine}: holds files that `ttsbench corpus make` did not write")
    assert _tree(mine) == before


def test_train_refuses_a_folder_that_is_not_a_training_run(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "val.jsonl").write_text('{"step": 1}\n')
    (theirs / "log.jsonl").write_text('{"their": "log"}\n')
    before = _tree(theirs)
    code, output = run(capsys, "train", "glow-tts", "--steps", "1", "--quiet", "--out", str(theirs))
    assert_refused(code, output, "log.jsonl, val.jsonl but no ttsbench training run (no config.json)")
    assert _tree(theirs) == before


def test_run_refuses_a_foreign_folder_and_another_suite_file_of_the_same_name(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    code, output = run(capsys, "run", str(_suite(tmp_path, "a")), "--out", str(theirs))
    assert_refused(code, output, "holds files but no ttsbench run (no run.json)")
    assert _tree(theirs) == {"notes.txt": b"mine"}

    out = tmp_path / "run"
    out.mkdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "a-1", "suite": "a", "created": 0,
                                              "suite_file": str(other / "a.yaml")}))
    before = _tree(out)
    code, output = run(capsys, "run", str(_suite(tmp_path, "a")), "--out", str(out))
    assert_refused(code, output, f"holds a run of the suite file {other / 'a.yaml'}, not {tmp_path / 'a.yaml'}")
    assert _tree(out) == before


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    suite = _suite(tmp_path, "a").read_text("utf-8").replace("corpus: embedded", f"corpus: {tmp_path / 'none'}")
    (tmp_path / "a.yaml").write_text(suite)
    code, output = run(capsys, "run", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "new" / "run"))
    assert code == 2 and "Traceback" not in output, output
    assert not (tmp_path / "new" / "run").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")) + "systems: *g\n",
     "YAML aliases expand to more than 100,000 values"),
    ("systems: &s\n  - *s\n", "suite.yaml:1: a YAML alias refers to its own value"),
    ("seeds: !!python/tuple [0, 1]\nsystems:\n  - {system: glow-tts}\n", "suite.yaml:1: YAML tag"),
    ("price_per_hour: .nan\nsystems:\n  - {system: glow-tts}\n", "price_per_hour: expected a finite number >= 0"),
    ("seeds: [1180591620717411303424]\nsystems:\n  - {system: glow-tts}\n",
     "seeds[0]: expected an integer from 0 to 4,294,967,295"),
])
def test_hostile_or_out_of_range_suites_are_refused_with_their_line(text, message, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(text)
    code, output = run(capsys, "run", str(suite), "--out", str(tmp_path / "out"))
    assert_refused(code, output, message)
    assert not (tmp_path / "out").exists()


def test_written_files_follow_the_umask(tmp_path):
    from ttsbench.fileio import FILE_MODE, atomic_write_json

    atomic_write_json(tmp_path / "results.json", {"a": 1})
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == FILE_MODE
    assert FILE_MODE & 0o044  # under the usual umask 022, others and the group can read


@pytest.mark.parametrize(("text", "output", "message"), [
    ("", "x.wav", "nothing to speak"),
    ("?!...", "x.wav", "nothing to speak"),
    ("three \U0001f600", "x.wav", "cannot be spoken"),
    ("three", "x.txt", "name a .wav file"),
    ("three", "/proc/x.wav", "cannot write in /proc"),
])
def test_synth_refuses_unspeakable_text_and_unwritable_output_before_synthesis(text, output, message, glow_checkpoint,
                                                                               tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, printed = run(capsys, "synth", str(glow_checkpoint), text, "-o", output)
    assert_refused(code, printed, message)
    assert "acoustic model" not in printed


def test_score_says_when_nothing_could_be_scored_and_counts_long_lists(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    ref, syn = tmp_path / "ref", tmp_path / "syn"
    ref.mkdir(), syn.mkdir()
    for i in range(12):
        sf.write(ref / f"u{i:02d}.wav", np.zeros(16000, dtype=np.float32), 16000)
    code, output = run(capsys, "score", "--ref", str(ref), "--syn", str(syn), "--out", str(tmp_path / "s.csv"))
    assert code == 2 and "12 file(s): u00, u01" in output and "(2 more)" in output, output
    for i in range(12):
        sf.write(syn / f"u{i:02d}.wav", np.zeros(100, dtype=np.float32), 16000)  # too short to analyse
    code, output = run(capsys, "score", "--ref", str(ref), "--syn", str(syn), "--metrics", "mcd",
                       "--out", str(tmp_path / "s.csv"))
    assert code == 2 and "none of the 12 syntheses could be scored" in output and "2 more not scored" in output
    code, output = run(capsys, "score", "--ref", str(ref), "--syn", str(syn), "--metrics", ",", "--out", "s.csv")
    assert_refused(code, output, "--metrics ',': names no metric")
    (syn / "u00.wav").write_text("not audio")
    code, output = run(capsys, "score", "--ref", str(ref), "--syn", str(syn), "--metrics", "mcd",
                       "--out", str(tmp_path / "s.csv"))
    assert_refused(code, output, f"{syn / 'u00.wav'}: not readable audio")


def test_a_run_is_not_continued_on_a_corpus_whose_content_changed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stored = {"path": "/data/corpus", "digest": "0" * 24}
    (out / "run.json").write_text(json.dumps({"run_id": "a-1", "suite": "a", "created": 0, "corpus": stored}))
    before = _tree(out)
    code, output = run(capsys, "run", str(_suite(tmp_path, "a")), "--out", str(out))
    assert_refused(code, output, f"was run on corpus /data/corpus with content digest {'0' * 24}", "now has digest")
    assert _tree(out) == before


def test_an_unusable_cache_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    cache_file = tmp_path / "cache-file"
    cache_file.write_text("")
    monkeypatch.setenv("TTSBENCH_CACHE", str(cache_file))
    code, output = run(capsys, "data", "check")
    assert_refused(code, output, f"TTSBENCH_CACHE {cache_file} is a file, not a folder")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "files.sqlite").write_text("not a database, just text " * 10)
    monkeypatch.setenv("TTSBENCH_CACHE", str(damaged))
    code, output = run(capsys, "data", "check")
    assert_refused(code, output, f"{damaged / 'files.sqlite'}: the file index cannot be opened")
    assert output.count("\n") == 1 and "unreadable audio" not in output


def test_damaged_run_files_are_named(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "a-1", "suite": "a", "created": 0}))
    (out / "jobs.json").write_text("{broken")
    code, output = run(capsys, "run", str(_suite(tmp_path, "a")), "--out", str(out))
    assert_refused(code, output, f"{out / 'jobs.json'}: damaged, not JSON")
    (tmp_path / "bench.json").write_text("not json")
    code, output = run(capsys, "report", str(out), "--out", str(tmp_path / "rep"), "--benchmarks",
                       str(tmp_path / "bench.json"))
    assert code == 2 and "damaged" in output and "Traceback" not in output, output


def test_data_check_refuses_texts_longer_than_their_audio_and_unusable_clips(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    corpus = Path(shutil.copytree(embedded_corpus_path(), tmp_path / "corpus"))
    lines = (corpus / "metadata.csv").read_text("utf-8").splitlines()
    first_id = lines[0].split("|")[0]
    lines[0] = f"{first_id}|{'word ' * 40_000}|{'word ' * 40_000}"
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n", "utf-8")
    second_id, third_id = lines[1].split("|")[0], lines[2].split("|")[0]
    (corpus / "wavs" / f"{second_id}.flac").unlink()
    sf.write(corpus / "wavs" / f"{second_id}.wav", np.full(8000, 1.5, dtype=np.float32), 16000, subtype="FLOAT")
    (corpus / "wavs" / f"{third_id}.flac").unlink()
    sf.write(corpus / "wavs" / f"{third_id}.wav", 0.5 * np.sin(np.arange(1000) / 3.0), 1000)
    code, output = run(capsys, "data", "check", str(corpus))
    assert_refused(code, output, "metadata.csv:1: text of 199,999 characters for", "40 per second plus 20",
                   "metadata.csv:2: over-range audio", "peaks at 1.50", "metadata.csv:3: sample rate too low")


def test_score_refuses_files_too_long_to_align(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    ref, syn = tmp_path / "ref", tmp_path / "syn"
    ref.mkdir(), syn.mkdir()
    sf.write(ref / "long.wav", np.zeros(16000 * 61, dtype=np.float32), 16000)
    sf.write(syn / "long.wav", np.zeros(16000, dtype=np.float32), 16000)
    code, output = run(capsys, "score", "--ref", str(ref), "--syn", str(syn), "--out", str(tmp_path / "s.csv"))
    assert_refused(code, output, f"{ref / 'long.wav'}: 61 s long", "at most 60 s")


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, capsys, monkeypatch):
    import errno
    import shutil as shutil_module
    from collections import namedtuple

    from ttsbench import train as train_module

    def full_disk(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(train_module.torch, "save", full_disk)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(100, 100, 0))
    with pytest.raises(OSError) as caught:
        train_module.atomic_torch_save({"a": 1}, tmp_path / "checkpoint.pt")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "checkpoint.pt")
    assert not list(tmp_path.iterdir())  # the temporary file is gone
    out = tmp_path / "run"
    code, output = run(capsys, "train", "glow-tts", "--steps", "2", "--val-every", "0", "--quiet", "--out", str(out))
    assert_refused(code, output, f"{out / 'checkpoint.pt'}: no space left on the device")


def test_a_suite_name_that_is_not_plain_is_refused(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: '`x` | y'\nsystems:\n  - {system: glow-tts}\n")
    code, output = run(capsys, "run", str(suite), "--out", str(tmp_path / "o"))
    assert_refused(code, output, "s.yaml:1: name: suite name '`x` | y': use letters, digits")


def test_misleading_corpus_layouts_are_named_for_what_they_are(tmp_path, capsys):
    folder_metadata = tmp_path / "a"
    (folder_metadata / "metadata.csv").mkdir(parents=True)
    folder_wav = tmp_path / "b"
    (folder_wav / "wavs" / "LJ1.wav").mkdir(parents=True)
    (folder_wav / "metadata.csv").write_text("LJ1|hello there|hello there\n")
    nul_id = tmp_path / "c"
    (nul_id / "wavs").mkdir(parents=True)
    (nul_id / "metadata.csv").write_bytes(b"LJ\x001|hello there|hello there\n")
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    for corpus, message in ((folder_metadata, "metadata.csv is a folder, not a file"),
                            (folder_wav, "LJ1.wav is a folder, not an audio file"),
                            (nul_id, "id 'LJ\\x001' contains a control character"),
                            (tmp_path / "l1", "corpus folder is a symbolic link that loops back on itself")):
        code, output = run(capsys, "data", "check", str(corpus))
        assert_refused(code, output, message)


def test_garbage_inside_a_cached_feature_pack_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TTSBENCH_CACHE", str(tmp_path / "cache"))
    argv = ["train", "glow-tts", "--steps", "1", "--val-every", "0", "--quiet", "--out"]
    assert run(capsys, *argv, str(tmp_path / "first"))[0] == 0
    packs = [p for p in (tmp_path / "cache" / "features").rglob("*") if p.is_file() and p.stat().st_size > 4096]
    assert packs
    for pack in packs:  # the tail of each pack (its arrays, not its table) overwritten: NaN bit patterns
        data = bytearray(pack.read_bytes())
        data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
        pack.write_bytes(bytes(data))
    code, output = run(capsys, *argv, str(tmp_path / "second"))
    assert_refused(code, output, "holds NaN or inf values (a damaged feature pack)", str(tmp_path / "cache"))
