from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ttsbench.audio import AudioConfig, mel_spectrogram, load_audio
from ttsbench.data import (
    Corpus,
    CorpusError,
    FeatureCache,
    Utterance,
    bucket_batches,
    check_corpus,
    collate,
    load_corpus,
    load_examples,
    standard_split_ids,
)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttsbench", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def corpus_copy(tmp_path, embedded_corpus) -> Path:
    """A writable copy of the first 6 embedded clips, as .wav like a real LJSpeech folder."""
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    lines = (embedded_corpus.root / "metadata.csv").read_text("utf-8").splitlines()[:6]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", "utf-8")
    for utt in embedded_corpus.utterances[:6]:
        data, sr = sf.read(utt.audio_path)
        sf.write(root / "wavs" / f"{utt.id}.wav", data, sr)
    return root


def test_embedded_corpus_is_real_ljspeech(embedded_corpus):
    assert len(embedded_corpus) == 24
    assert embedded_corpus.name == "embedded"
    assert {u.sample_rate for u in embedded_corpus.utterances} == {22050}
    assert 150 < sum(u.duration for u in embedded_corpus.utterances) < 180
    assert embedded_corpus.by_id()["LJ001-0002"].text == "in being comparatively modern."


def test_cli_data_check_passes_on_embedded_and_copy(corpus_copy):
    for target in ("embedded", str(corpus_copy)):
        result = run_cli("data", "check", target)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "utterances:" in result.stdout and "22050 Hz" in result.stdout
    assert "utterances: 6" in run_cli("data", "check", str(corpus_copy)).stdout


def test_every_defect_kind_is_reported_with_file_and_line(corpus_copy):
    meta = corpus_copy / "metadata.csv"
    lines = meta.read_text("utf-8").splitlines()
    (corpus_copy / "wavs" / "LJ001-0002.wav").unlink()  # line 2: missing wav
    (corpus_copy / "wavs" / "LJ001-0003.wav").write_bytes(b"this is not audio")  # line 3: unreadable
    sf.write(corpus_copy / "wavs" / "LJ001-0004.wav", np.zeros(0), 22050)  # line 4: zero-length
    extra = [
        "LJ001-0099||",  # line 7: empty text
        "just one field",  # line 8: malformed
        lines[0],  # line 9: duplicate id
        "../evil|text|text",  # line 10: path traversal
        "sub/dir|text|text",  # line 11: path separator
    ]
    body = ("\n".join(lines + extra) + "\n").encode("utf-8") + b"LJ009-0009|caf\xe9 bytes|x\n"  # line 12
    meta.write_bytes(body)

    corpus, problems = check_corpus(corpus_copy)
    text = [str(p) for p in problems]
    expected = {
        2: "missing audio",
        3: "unreadable audio",
        4: "zero-length audio",
        7: "empty text",
        8: "malformed line",
        9: "duplicate id",
        10: "path separator or '..'",
        11: "path separator or '..'",
        12: "not valid UTF-8",
    }
    assert len(problems) == len(expected), text
    for line, fragment in expected.items():
        assert any(t.startswith(f"{meta}:{line}: ") and fragment in t for t in text), (line, text)
    assert [u.id for u in corpus.utterances] == ["LJ001-0001", "LJ001-0005", "LJ001-0006"]

    result = run_cli("data", "check", str(corpus_copy))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert len([l for l in result.stdout.splitlines() if l.startswith(str(meta))]) == len(expected)
    with pytest.raises(CorpusError) as err:
        load_corpus(corpus_copy)
    assert len(err.value.problems) == len(expected)


def test_missing_folder_and_metadata_are_clear(tmp_path):
    assert "does not exist" in str(check_corpus(tmp_path / "nope")[1][0])
    assert "metadata.csv is missing" in str(check_corpus(tmp_path)[1][0])


def test_seeded_split_is_deterministic_and_disjoint(embedded_corpus):
    a, b = embedded_corpus.split(seed=3), embedded_corpus.split(seed=3)
    assert {k: [u.id for u in v] for k, v in a.items()} == {k: [u.id for u in v] for k, v in b.items()}
    ids = [u.id for split in a.values() for u in split]
    assert sorted(ids) == sorted(u.id for u in embedded_corpus.utterances)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (20, 2, 2)
    assert [u.id for u in embedded_corpus.split(seed=4)["val"]] != [u.id for u in a["val"]] or \
        [u.id for u in embedded_corpus.split(seed=5)["val"]] != [u.id for u in a["val"]]


def test_full_ljspeech_gets_the_standard_split(tmp_path):
    ids = [i for s in ("train", "val", "test") for i in standard_split_ids(s)]
    assert len(ids) == 13100
    utts = [Utterance(i, "text", tmp_path / f"{i}.wav", n, 22050, 22050) for n, i in enumerate(ids, 1)]
    corpus = Corpus(tmp_path, utts)
    assert corpus.is_full_ljspeech
    split = corpus.split()
    assert [u.id for u in split["val"]] == standard_split_ids("val")
    assert [u.id for u in split["test"]] == standard_split_ids("test")
    assert not Corpus(tmp_path, utts[:-1]).is_full_ljspeech


def test_feature_cache_hit_returns_identical_arrays(tmp_path, embedded_corpus):
    config = AudioConfig()
    cache = FeatureCache(config, root=tmp_path)
    path = embedded_corpus.utterances[0].audio_path
    cold = cache.get(path, ["mel", "linear"])
    assert cache.path(path, "mel").is_file() and cache.path(path, "linear").is_file()
    warm = cache.get(path, ["mel", "linear"])
    for kind in ("mel", "linear"):
        assert np.array_equal(cold[kind], warm[kind])
    np.testing.assert_array_equal(cold["mel"], mel_spectrogram(load_audio(path, config), config))
    other = FeatureCache(AudioConfig(n_mels=40), root=tmp_path)
    assert other.path(path, "mel") != cache.path(path, "mel")
    assert other.get(path, ["mel"])["mel"].shape[1] == 40
    with pytest.raises(KeyError, match="unknown feature"):
        cache.get(path, ["pitchx"])


def test_collate_pads_to_frame_multiple_with_masks(embedded_corpus):
    examples = load_examples(embedded_corpus.utterances[:3], AudioConfig(), progress=False)
    silence = math.log(1e-5)
    batch = collate(examples, frame_multiple=7, pad_values={"mel": silence})
    lengths = [e.num_frames for e in examples]
    assert batch.mel.shape == (3, -(-max(lengths) // 7) * 7, 80)
    assert batch.frame_lengths.tolist() == lengths
    assert batch.frame_mask.sum(1).tolist() == lengths
    assert batch.text_mask.sum(1).tolist() == [len(e.text_ids) for e in examples]
    shortest = int(np.argmin(lengths))
    assert torch.all(batch.mel[shortest, lengths[shortest] :] == silence)
    assert torch.equal(batch.mel[0, : lengths[0]], torch.from_numpy(examples[0].features["mel"]))


def test_bucket_batches_cover_everything_once_and_group_lengths():
    lengths = list(np.random.default_rng(0).integers(10, 1000, size=200))
    batches = bucket_batches(lengths, batch_size=8, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    assert batches == bucket_batches(lengths, batch_size=8, seed=1)
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 0.25 * (max(lengths) - min(lengths))
