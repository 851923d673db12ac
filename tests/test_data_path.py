"""The scalable data path: the file index, memory-mapped features, the preparation pool and
prefetched batches, and that training computes what it computed before them."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ttsbench import data, featurecache, models, prepare
from ttsbench.cli import main
from ttsbench.batches import collate, load_examples
from ttsbench.data import check_corpus, file_digest
from ttsbench.errors import UserError
from ttsbench.featurecache import FeatureCache, FeatureFiles
from ttsbench.fileindex import FileIndex
from ttsbench.prepare import Workers, prepare_corpus
from ttsbench.train import EpochPlan, LazyBatches, Prefetcher, TrainOptions, TrainState, train

# The fixture was recorded on another machine: its CPU's kernels round differently in the last bits,
# and FastSpeech2's hard duration decisions carry that to ~3e-4 of its losses by step 2 (seen here).
# A data path bug (a wrong feature, a misordered batch) moves a loss by far more than 1e-3.
LOSS_RTOL = 1e-3
BEFORE = json.loads((Path(__file__).parent / "data" / "losses_before_data_path.json").read_text("utf-8"))


# The tiny recipes changed after the recording (so that every system speaks within minutes):
# these overrides restore the recipe each recorded system was trained with then.
RECORDED_RECIPES = {
    "tacotron-gradual": [
        "embedding_dim=64", "encoder_prenet_dims=[64, 32]", "encoder_channels=32", "decoder_prenet_dims=[64, 32]",
        "attention_rnn_dim=64", "attention_dim=32", "decoder_rnn_dim=64", "postnet_channels=32",
        "postnet_projection_dim=64", "gradual_training=[[0, 6, 8], [100, 4, 8], [200, 3, 8], [300, 2, 4]]",
    ],
    "dc-tts": ["audio.n_fft=2048", "audio.win_length=1102", "mean_output_init=false", "ssrn_train_window=32"],
    "rl-duration": ["decoder_units=32", "learning_rate=0.001", "decoder_target=first", "imitation_weight=0",
                    "samples_per_utterance=4"],
}


@pytest.mark.parametrize("system", sorted(BEFORE["systems"]))
def test_losses_are_those_of_the_in_memory_data_path(system: str, embedded_corpus, tmp_path: Path) -> None:
    """Same seed, same losses as before features were mapped and batches prefetched."""
    model = models.build(system, models.config_for(system, "tiny", RECORDED_RECIPES.get(system, [])), seed=0)
    options = TrainOptions(steps=4, seed=0, val_every=0, checkpoint_every=100, progress=False, threads=1)
    train(model, embedded_corpus, tmp_path, options)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text("utf-8").splitlines()]
    before = BEFORE["systems"][system]
    assert len(rows) == len(before)
    for now, then in zip(rows, before):
        for key, value in then.items():
            assert now[key] == pytest.approx(value, rel=LOSS_RTOL, abs=1e-6), (system, now["step"], key)


def _write_clip(path: Path, seconds: float = 0.5, level: float = 0.5) -> None:
    t = np.arange(int(22050 * seconds)) / 22050
    sf.write(path, (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050, subtype="PCM_16")


def test_file_index_keeps_facts_per_file_version(tmp_path: Path) -> None:
    clip = tmp_path / "a.wav"
    _write_clip(clip)
    calls: list[Path] = []

    def size(path: Path) -> int:
        calls.append(path)
        return path.stat().st_size

    index = FileIndex(tmp_path / "files.sqlite")
    first = index.lookup(clip, "size", size)
    assert index.lookup(clip, "size", size) == first and len(calls) == 1
    index.flush()
    assert FileIndex(tmp_path / "files.sqlite").lookup(clip, "size", size) == first and len(calls) == 1  # on disk
    _write_clip(clip, seconds=0.7)  # a new version: new size and mtime
    assert FileIndex(tmp_path / "files.sqlite").lookup(clip, "size", size) != first and len(calls) == 2


def test_file_index_serves_other_threads_and_closes(tmp_path: Path) -> None:
    clip = tmp_path / "a.wav"
    _write_clip(clip)
    index = FileIndex(tmp_path / "files.sqlite")
    index.lookup(clip, "size", lambda path: path.stat().st_size)
    index.flush()  # opens this thread's connection and keeps it
    with ThreadPoolExecutor(1) as thread:  # result() raises what the thread raised
        thread.submit(lambda: (index.lookup(clip, "name", lambda path: path.name), index.flush())).result()
    index.close()
    assert not (tmp_path / "files.sqlite-wal").exists()  # the last connection closed and checkpointed
    again = FileIndex(tmp_path / "files.sqlite")
    assert again.lookup(clip, "name", lambda path: "recomputed") == "a.wav"
    assert again.lookup(clip, "size", lambda path: -1) == clip.stat().st_size


def test_check_corpus_reads_each_file_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wavs").mkdir()
    for name in ("a", "b"):
        _write_clip(tmp_path / "wavs" / f"{name}.wav")
    (tmp_path / "metadata.csv").write_text("a|one two|one two\nb|three|three\n", "utf-8")
    scans: list[Path] = []
    real_scan = data._scan_audio
    monkeypatch.setattr(data, "_scan_audio", lambda path: scans.append(path) or real_scan(path))
    assert check_corpus(tmp_path)[1] == [] and len(scans) == 2
    assert check_corpus(tmp_path)[1] == [] and len(scans) == 2  # both facts came from the index
    _write_clip(tmp_path / "wavs" / "b.wav", seconds=0.6, level=5e-4)  # edited: now near-silent
    problems = check_corpus(tmp_path)[1]
    assert len(scans) == 3 and len(problems) == 1 and "near-silent" in problems[0].message


def test_features_are_mapped_not_copied(embedded_corpus, tmp_path: Path) -> None:
    utterances = embedded_corpus.utterances[:3]
    cache = FeatureCache(models.get("glow-tts").Config.tiny().audio, tmp_path)
    examples = load_examples(utterances, cache.config, kinds=("mel",), cache=cache, progress=False)
    mel = examples[0].features["mel"]
    assert isinstance(examples[0].features, FeatureFiles) and isinstance(mel, np.memmap)
    assert examples[0].num_frames == mel.shape[0]
    batch = collate(examples)
    assert torch.equal(batch.mel[0, : examples[0].num_frames], torch.from_numpy(np.array(mel)))


def test_a_truncated_feature_pack_is_removed_and_computed_again(embedded_corpus, tmp_path: Path) -> None:
    """A job that meets a damaged pack (a disk fault) warns, removes it and computes its
    features again instead of failing mid-training."""
    path = embedded_corpus.utterances[0].audio_path
    config = models.get("glow-tts").Config.tiny().audio
    whole = FeatureCache(config, tmp_path).get(path, ["mel"], file_digest(path))["mel"]
    pack, = FeatureCache(config, tmp_path).root.glob("*.pack")
    pack.write_bytes(pack.read_bytes()[:-100])
    cache = FeatureCache(config, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.missing(file_digest(path), ["mel"]) == ["mel"]
    assert any("damaged feature pack, removed: truncated" in str(w.message) for w in caught)
    assert not pack.exists()
    np.testing.assert_array_equal(cache.get(path, ["mel"], file_digest(path))["mel"], whole)


def test_prepare_in_a_pool_computes_what_a_job_would(embedded_corpus, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers (chunks made small so the 24 clips reach the pool) on a new file index: the
    pool reads each clip and computes its features in one pass, and the corpus check then finds
    what the pool read. A second pass finds everything done, and the features equal those
    computed in this process. FastSpeech2's pitch and energy are registered by `prosody`, which
    the workers (forked from a server without torch) import when asked for them, and still
    import no torch."""
    monkeypatch.setattr(prepare, "MAX_CHUNK", 4)
    monkeypatch.setenv("TTSBENCH_CACHE", str(tmp_path / "new-index"))
    systems = ("tacotron-gradual", "fastspeech2-sniper")
    requests = models.feature_requests([(system, models.config_for(system, "tiny")) for system in systems])
    assert featurecache.feature_modules(k for ks in requests.values() for k in ks) == ("ttsbench.prosody",)
    with Workers(2, progress=False) as workers:
        corpus, summary = prepare_corpus("embedded", requests, workers, root=tmp_path / "pool")
        assert summary.computed == len(embedded_corpus) and summary.workers == 2
        assert [u.num_samples for u in corpus.utterances] == [u.num_samples for u in embedded_corpus.utterances]
        assert data.facts_unknown([u.audio_path for u in corpus.utterances]) == []
        assert prepare_corpus("embedded", requests, workers, root=tmp_path / "pool")[1].computed == 0
        assert workers.start().submit(eval, "'torch' in __import__('sys').modules").result() is False
    for config, kinds in requests.items():
        for utterance in embedded_corpus.utterances[:4]:
            digest = file_digest(utterance.audio_path)
            pooled = FeatureCache(config, tmp_path / "pool").get(utterance.audio_path, kinds, digest)
            inline = FeatureCache(config, tmp_path / "inline").get(utterance.audio_path, kinds, digest)
            for kind in kinds:
                np.testing.assert_array_equal(pooled[kind], inline[kind])


def test_prepare_names_a_file_it_cannot_compute_and_keeps_the_rest(embedded_corpus, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    broken = embedded_corpus.utterances[1].audio_path
    real = featurecache.load_audio

    def load(path, config):  # noqa: ANN001, ANN202 - the signature of audio.load_audio
        if Path(path) == broken:
            raise RuntimeError("decoder exploded")
        return real(path, config)

    monkeypatch.setattr(featurecache, "load_audio", load)
    requests = {models.get("glow-tts").Config.tiny().audio: ("mel",)}
    with Workers(1, progress=False) as workers, pytest.raises(UserError) as raised:
        prepare_corpus("embedded", requests, workers, root=tmp_path)
    assert f"{broken}: RuntimeError: decoder exploded" in str(raised.value)
    assert "1 of 24 files" in str(raised.value)
    cache = FeatureCache(next(iter(requests)), tmp_path)
    kept = [u for u in embedded_corpus.utterances if not cache.missing(file_digest(u.audio_path), ["mel"])]
    assert len(kept) == len(embedded_corpus) - 1 and broken not in {u.audio_path for u in kept}


def test_data_prepare_command_then_everything_cached(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "prepare", "embedded", "--systems", "glow-tts", "--workers", "1", "--quiet"]) == 0
    assert main(["data", "prepare", "embedded", "--systems", "glow-tts", "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "features of 24 utterances: 0 computed, 24 already cached" in last


def test_data_prepare_imports_neither_metrics_nor_runner_nor_report() -> None:
    """Start-up is serial time in every preparation (and in each pool process started from the
    `ttsbench` script): the command loads only what it uses."""
    heavy = ("ttsbench.metrics.quality", "ttsbench.runner", "ttsbench.report", "ttsbench.train", "matplotlib",
             "pandas", "scipy.signal", "resemblyzer")
    code = (f"import sys, ttsbench.cli as cli; cli.handler('data:cmd_prepare'); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_feature_workers_import_no_torch() -> None:
    """The fork server imports PRELOAD before it forks the first worker: without torch (and the
    models) it answers ~0.8 s sooner, and a worker imports a system's module only when asked
    for a kind that module defines."""
    code = ("import importlib, sys; from ttsbench.forkserver import PRELOAD; "
            "[importlib.import_module(name) for name in PRELOAD]; print('torch' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"


def test_the_command_line_parses_without_torch() -> None:
    """`data prepare` starts its fork server before it imports torch, so that the two imports run
    on two cores: parsing and the error boundary must not import it (nor numpy)."""
    code = "import sys, ttsbench.cli as cli; cli.build_parser(); print('torch' in sys.modules, 'numpy' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == ["False", "False"]


def test_the_fork_server_preload_covers_every_feature() -> None:
    """A worker forked after PRELOAD imports no more librosa on its first clip: every system's
    features computed in a process that imported PRELOAD load no new librosa or scipy module."""
    code = (
        "import importlib, sys, tempfile\n"
        "from pathlib import Path\n"
        "from ttsbench.forkserver import PRELOAD\n"
        "for name in PRELOAD: importlib.import_module(name)\n"
        "from ttsbench import models\n"
        "from ttsbench.data import load_corpus\n"
        "from ttsbench.featurecache import compute_features\n"
        "clip = load_corpus('embedded').utterances[0].audio_path\n"
        "configs = [models.get(s).features_for(models.config_for(s, 'tiny')) for s in models.names()]\n"
        "before = set(sys.modules)\n"
        "for features in configs:\n"
        "    for kind, audio in features.items():\n"
        "        compute_features(clip, audio, [kind])\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('librosa', 'scipy')))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_no_fork_server_for_one_worker() -> None:
    """`--workers 1` computes in the command's process: starting a server would cost a core."""
    code = ("import multiprocessing.forkserver as f; from ttsbench.forkserver import start_early; "
            "start_early(1); print(f._forkserver._forkserver_pid)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "None"


def test_prepare_corpus_validates_after_reading_in_the_pool(tmp_path: Path) -> None:
    (tmp_path / "wavs").mkdir()
    _write_clip(tmp_path / "wavs" / "a.wav")
    (tmp_path / "wavs" / "b.wav").write_bytes(b"RIFF not audio")
    (tmp_path / "metadata.csv").write_text("a|one|one\nb|two|two\n", "utf-8")
    with pytest.raises(data.CorpusError) as raised:
        prepare_corpus(tmp_path, {}, Workers(1, progress=False))
    assert "metadata.csv:2: unreadable audio" in str(raised.value)


def test_prefetched_batches_are_the_in_order_batches(embedded_corpus) -> None:
    """Peeking ahead (and across an epoch and a batch-size change) never alters the plan."""
    lengths = [u.num_samples for u in embedded_corpus.utterances]
    sizes = [3] * 12 + [5] * 10
    inline_plan, ahead_plan = EpochPlan(lengths, seed=1), EpochPlan(lengths, seed=1)
    inline_state, ahead_state = TrainState(), TrainState()
    inline = [inline_plan.next_batch(inline_state, size) for size in sizes]
    ahead = []
    for step, size in enumerate(sizes):
        ahead.append(ahead_plan.next_batch(ahead_state, size))
        if step + 1 < len(sizes):
            assert ahead_plan.peek(ahead_state, sizes[step + 1]) == inline[step + 1]
    assert ahead == inline and ahead_state == inline_state


def test_prefetcher_gives_the_batch_asked_for(embedded_corpus) -> None:
    cache = FeatureCache(models.get("glow-tts").Config.tiny().audio)
    examples = load_examples(embedded_corpus.utterances[:6], cache.config, cache=cache, progress=False)
    batches = LazyBatches([], examples, 1, {"mel": 0.0}, torch.device("cpu"))
    prefetch = Prefetcher(batches)
    try:
        prefetch.ahead([0, 1])
        assert prefetch.take([0, 1]).ids == [examples[0].id, examples[1].id]
        prefetch.ahead([2, 3])
        assert prefetch.take([4, 5]).ids == [examples[4].id, examples[5].id]  # not the one prepared
    finally:
        prefetch.close()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_is_in_the_config_hash(amp: str, embedded_corpus, tmp_path: Path) -> None:
    """autocast runs on CPU too, so the path CUDA takes is exercised here: losses stay finite,
    fp16's gradient scaler is checkpointed, and the option changes a suite job's hash."""
    config = models.config_for("glow-tts", "tiny", [f"amp={amp}"])
    model = models.build("glow-tts", config, seed=0)
    result = train(model, embedded_corpus, tmp_path, TrainOptions(steps=3, val_every=0, progress=False, threads=1))
    assert result.state == "finished" and np.isfinite(result.last_losses["loss"])
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ("model" in checkpoint["scalers"]) == (amp == "fp16")
    assert config.to_dict()["amp"] == amp != models.config_for("glow-tts", "tiny").to_dict()["amp"]


def test_compile_keeps_parameter_names_so_checkpoints_load_either_way() -> None:
    model = models.build("glow-tts", models.config_for("glow-tts", "tiny", ["compile=true"]), seed=0)
    eager = models.build("glow-tts", models.config_for("glow-tts", "tiny"), seed=0)
    model.compile_networks()  # compiled lazily, at the first forward: nothing is compiled here
    assert list(model.state_dict()) == list(eager.state_dict())
    model.load_state_dict(eager.state_dict())


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name: state, parent pid, ... (empty once it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _descendants(pid: int) -> set[int]:
    """The processes below `pid` (Linux /proc): its children, theirs, and so on."""
    children: dict[int, list[int]] = {}
    for process in Path("/proc").glob("[0-9]*"):
        if fields := _stat_fields(process.name):
            children.setdefault(int(fields[1]), []).append(int(process.name))
    found, todo = set(), [pid]
    while todo:
        found.update(below := children.get(todo.pop(), []))
        todo += below
    return found


def _alive(pid: int) -> bool:
    return _stat_fields(pid)[:1] not in ([], ["Z"])  # gone, or a zombie nobody reaped


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_preparation_keeps_its_packs_and_the_next_computes_the_rest(tmp_path: Path, workers: int) -> None:
    """SIGKILL while `data prepare` writes its packs (one per 32 clips): the packs written are
    whole, and the next run finds their clips cached and computes only the others. A pool's
    fork server and workers end with the command (none is left idling)."""
    corpus, count = tmp_path / "corpus", 480
    (corpus / "wavs").mkdir(parents=True)
    for i in range(count):
        _write_clip(corpus / "wavs" / f"c{i:03d}.wav", seconds=0.5 + i / 1000)  # distinct content
    (corpus / "metadata.csv").write_text("".join(f"c{i:03d}|clip {i}|clip {i}\n" for i in range(count)), "utf-8")
    env = {**os.environ, "TTSBENCH_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "ttsbench", "data", "prepare", str(corpus), "--systems", "glow-tts",
               "--workers", str(workers), "--quiet"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    packs = tmp_path / "cache" / "features"
    deadline = time.monotonic() + 120
    while len(list(packs.glob("*/*.pack"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    below = _descendants(process.pid)
    process.kill()
    process.wait()
    assert workers == 1 or len(below) >= 3, f"no pool seen under the command: {below}"  # server, 2 workers
    deadline = time.monotonic() + 10
    while (left := {pid for pid in below if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, "processes of the killed command live on"
    kept = len(list(packs.glob("*/*.pack")))
    assert 2 <= kept < count // 32, "killed too late to test anything: make the corpus longer"
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    assert f"{count - 32 * kept} computed, {32 * kept} already cached" in again


def test_the_fork_server_imports_without_the_collector_and_workers_run_with_it() -> None:
    """Full collections set off by librosa's imports cost the server ~0.3 s before its first
    fork: it imports PRELOAD with the collector off, and each worker turns it back on with the
    inherited objects frozen (so its own collections skip them)."""
    code = ("import gc, importlib; from ttsbench.forkserver import PRELOAD; "
            "[importlib.import_module(name) for name in PRELOAD]; print(gc.isenabled())")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    with Workers(2, progress=False) as workers:
        pool = workers.start()
        assert pool.submit(gc.isenabled).result() is True
        assert pool.submit(gc.get_freeze_count).result() > 100_000


def test_the_command_line_gives_its_caller_the_collector_back() -> None:
    """`main` freezes the imported heap while a command runs and unfreezes it after, so a caller
    in the same process (a test, a notebook) collects its own cycles as before."""
    frozen = gc.get_freeze_count()
    assert main(["list"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    gc.freeze()  # a caller that froze objects itself keeps its freeze as it was
    try:
        held = gc.get_freeze_count()
        assert main(["list"]) == 0 and gc.get_freeze_count() == held
    finally:
        gc.unfreeze()


def _die_in_worker(chunk: list[int]) -> list[int]:
    os._exit(1)  # what a segfault in a native library, or the OOM killer, does to a worker


def test_a_worker_that_dies_is_a_clear_error() -> None:
    with Workers(2, progress=False) as workers, pytest.raises(UserError, match="feature worker process died"):
        workers.run(_die_in_worker, list(range(4 * prepare.MAX_CHUNK)), "dying")


def test_prepare_points_at_the_npy_folders_of_an_older_cache(embedded_corpus, tmp_path: Path) -> None:
    config = models.config_for("glow-tts", "tiny").audio
    old = tmp_path / "features" / config.digest() / "ab"
    old.mkdir(parents=True)
    np.save(old / "ab12.mel.npy", np.zeros((3, 80), np.float32))
    with Workers(1, progress=False) as workers, pytest.warns(UserWarning, match=r"1 folder\(s\) of .npy features"):
        prepare_corpus("embedded", {config: ("mel",)}, workers, root=tmp_path / "features")
