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
from ttsbench.batches import bucket_batches, collate, load_examples
from ttsbench.data import (
    Corpus,
    CorpusError,
    Utterance,
    check_corpus,
    file_digest,
    load_corpus,
    standard_split_ids,
)
from ttsbench.featurecache import FeatureCache
from ttsbench.text import TextProcessor


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
    assert [p.line for p in problems] == sorted(expected)  # audio and text problems merged in line order
    for line, fragment in expected.items():
        assert any(t.startswith(f"{meta}:{line}: ") and fragment in t for t in text), (line, text)
    assert [u.id for u in corpus.utterances] == ["LJ001-0001", "LJ001-0005", "LJ001-0006"]

    result = run_cli("data", "check", str(corpus_copy))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith(str(meta))]) == len(expected)
    with pytest.raises(CorpusError) as err:
        load_corpus(corpus_copy)
    assert len(err.value.problems) == len(expected)


def test_missing_folder_and_metadata_are_clear(tmp_path):
    assert "does not exist" in str(check_corpus(tmp_path / "nope")[1][0])
    assert "metadata.csv does not exist" in str(check_corpus(tmp_path)[1][0])


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
    digest = file_digest(path)
    cold = cache.get(path, ["mel", "linear"], digest)
    pack, = cache.root.glob("*.pack")  # one file holds both kinds
    assert cache.find(digest, "mel").pack == cache.find(digest, "linear").pack == pack
    warm = FeatureCache(config, root=tmp_path).get(path, ["mel", "linear"], digest)
    for kind in ("mel", "linear"):
        assert np.array_equal(cold[kind], warm[kind])
    np.testing.assert_array_equal(cold["mel"], mel_spectrogram(load_audio(path, config), config))
    other = FeatureCache(AudioConfig(n_mels=40), root=tmp_path)
    assert other.root != cache.root and other.missing(digest, ["mel"]) == ["mel"]
    assert other.get(path, ["mel"], digest)["mel"].shape[1] == 40
    with pytest.raises(KeyError, match="unknown feature"):
        cache.get(path, ["pitchx"], digest)


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
    assert torch.equal(batch.mel[0, : lengths[0]], torch.from_numpy(np.array(examples[0].features["mel"])))


def test_bucket_batches_cover_everything_once_and_group_lengths():
    lengths = list(np.random.default_rng(0).integers(10, 1000, size=200))
    batches = bucket_batches(lengths, batch_size=8, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    assert batches == bucket_batches(lengths, batch_size=8, seed=1)
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 0.25 * (max(lengths) - min(lengths))


# --------------------------------------------------------------------------------------------
# Audio that loads but would break or poison training (issue #20)

SR = 22050


def tone(seconds: float = 1.0, peak: float = 0.5) -> np.ndarray:
    """A clip that passes every check: 220 Hz at -6 dBFS."""
    return (peak * np.sin(2 * np.pi * 220 * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def write_corpus(root: Path, clips: dict[str, np.ndarray], subtype: str = "PCM_16") -> Path:
    """A tiny corpus: line 1 is a good clip, then one line per clip, in order."""
    (root / "wavs").mkdir(parents=True)
    clips = {"good": tone(), **clips}
    for utt_id, data in clips.items():
        sf.write(root / "wavs" / f"{utt_id}.wav", data, SR, subtype=subtype)
    (root / "metadata.csv").write_text("".join(f"{i}|Some text.|Some text.\n" for i in clips), "utf-8")
    return root


def only_problem(root: Path, line: int, utt_id: str, *fragments: str, **limits: float) -> str:
    """The single problem check_corpus finds: on `line`, naming the clip's file and each fragment."""
    corpus, problems = check_corpus(root, **limits)
    assert len(problems) == 1, [str(p) for p in problems]
    text = str(problems[0])
    assert text.startswith(f"{root / 'metadata.csv'}:{line}: "), text
    assert str(root / "wavs" / f"{utt_id}.wav") in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert [u.id for u in corpus.utterances] == ["good"]
    return text


def test_nan_and_inf_samples_are_reported(tmp_path):
    nan, inf = tone(), tone()
    nan[[100, 200]] = np.nan
    inf[SR // 2] = np.inf
    write_corpus(tmp_path / "nan", {"nan": nan}, subtype="FLOAT")
    only_problem(tmp_path / "nan", 2, "nan", "non-finite audio", "2 NaN/inf sample(s)", f"{100 / SR:.3f} s")
    write_corpus(tmp_path / "inf", {"inf": inf}, subtype="FLOAT")
    only_problem(tmp_path / "inf", 2, "inf", "non-finite audio", "1 NaN/inf", "0.500 s")


def test_silent_and_near_silent_audio_is_reported_with_its_level(tmp_path):
    write_corpus(tmp_path / "zeros", {"zeros": np.zeros(SR, np.float32)})
    only_problem(tmp_path / "zeros", 2, "zeros", "silent audio", "all zeros", "-inf dBFS")
    write_corpus(tmp_path / "hiss", {"hiss": tone(peak=10 ** (-70 / 20))}, subtype="FLOAT")
    only_problem(tmp_path / "hiss", 2, "hiss", "near-silent audio", "-70.0 dBFS")
    # Real speech recorded very quietly (-40 dBFS, 34 dB below LJSpeech's quietest clip) passes.
    write_corpus(tmp_path / "quiet", {"quiet": tone(peak=10 ** (-40 / 20))})
    assert check_corpus(tmp_path / "quiet")[1] == []


def test_too_short_and_too_long_audio_are_reported_and_limits_settable(tmp_path):
    write_corpus(tmp_path / "short", {"short": tone(0.1)})
    only_problem(tmp_path / "short", 2, "short", "audio too short", "0.100 s", "min_seconds=0.3")
    assert check_corpus(tmp_path / "short", min_seconds=0.05)[1] == []
    write_corpus(tmp_path / "long", {"long": tone(21.0)})
    only_problem(tmp_path / "long", 2, "long", "audio too long", "21.00 s", "max_seconds=20")
    only_problem(tmp_path / "long", 2, "long", "max_seconds=2", max_seconds=2.0)
    assert len(load_corpus(tmp_path / "long", max_seconds=30.0)) == 2
    with pytest.raises(CorpusError, match="audio too long"):
        load_corpus(tmp_path / "long")


def test_truncated_data_chunk_is_reported(tmp_path):
    root = write_corpus(tmp_path / "cut", {"cut": tone()})
    wav = root / "wavs" / "cut.wav"
    wav.write_bytes(wav.read_bytes()[:-1001])  # 500.5 frames of 16-bit mono gone
    assert sf.info(str(wav)).frames == SR - 501  # libsndfile hides the loss: only the header tells
    only_problem(root, 2, "cut", "truncated audio", f"holds {SR - 501} of the {SR} frames")


def test_truncated_flac_is_reported(tmp_path):
    root = write_corpus(tmp_path / "flac", {})
    sf.write(root / "wavs" / "cut.flac", tone(3.0), SR)
    flac = root / "wavs" / "cut.flac"
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    (root / "metadata.csv").write_text("good|Some text.|x\ncut|Some text.|x\n", "utf-8")
    corpus, problems = check_corpus(root)
    assert [u.id for u in corpus.utterances] == ["good"]
    assert len(problems) == 1 and str(problems[0]).startswith(f"{root / 'metadata.csv'}:2: ")
    assert str(flac) in str(problems[0]) and "truncated or corrupt" in str(problems[0])  # the decoder gives up


def test_every_audio_defect_is_reported_at_once(tmp_path):
    nan = tone()
    nan[5] = np.nan
    root = write_corpus(tmp_path / "c", {"nan": nan, "zeros": np.zeros(SR), "short": tone(0.1)}, subtype="FLOAT")
    corpus, problems = check_corpus(root)
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (2, "non-finite audio"),
        (3, "silent audio"),
        (4, "audio too short"),
    ]
    assert [u.id for u in corpus.utterances] == ["good"]


def test_metadata_with_utf8_bom_is_accepted(corpus_copy):
    meta = corpus_copy / "metadata.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    corpus, problems = check_corpus(corpus_copy)
    assert problems == []
    assert corpus.utterances[0].id == "LJ001-0001" and corpus.utterances[0].line == 1


def test_text_the_front_end_would_drop_is_reported(corpus_copy):
    meta = corpus_copy / "metadata.csv"
    lines = meta.read_text("utf-8").splitlines()
    # unidecode has no ASCII for emoji, so cleaning deletes them without encode() noticing.
    lines[1] = "LJ001-0002|in being 😀 modern.|in being 😀 modern."
    lines[2] = "LJ001-0003|a caf\u0065\u0301 and na\u00efve text|"  # decomposed and composed accents are fine
    lines[3] = "LJ001-0004|price @ 5|"  # an ASCII symbol outside the table: already caught by encode()
    meta.write_text("\n".join(lines) + "\n", "utf-8")
    corpus, problems = check_corpus(corpus_copy)
    text = [str(p) for p in problems]
    assert len(text) == 2, text
    assert text[0].startswith(f"{meta}:2: unknown characters '😀'") and "silently drop" in text[0]
    assert text[1].startswith(f"{meta}:4: unknown characters '@'")
    assert "LJ001-0003" in corpus.by_id()
    with pytest.warns(UserWarning, match="dropping unknown characters '@'"):
        assert check_corpus(corpus_copy, TextProcessor(on_unknown="drop"))[1] == []  # the user chose to drop


def test_embedded_corpus_passes_every_check():
    corpus, problems = check_corpus("embedded")
    assert problems == [] and len(corpus) == 24
