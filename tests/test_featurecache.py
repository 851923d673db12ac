"""Feature packs: what is written is what is mapped back, damage is detected, and a cache sees
the packs other processes add and forgets those removed."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ttsbench.audio import AudioConfig
from ttsbench.featurecache import FeatureCache, NewerPackError, PackError, read_table, write_pack


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a.mel": rng.standard_normal((7, 80)).astype(np.float32),
        "a.pitch": rng.standard_normal(7).astype(np.float64),  # 1-D, another dtype
        "b.flags": np.arange(5, dtype=np.uint8),  # an odd byte count: the next array is realigned
        "c.mel": np.asfortranarray(rng.standard_normal((5, 4)).astype(np.float32)),  # not C-ordered
    }


def test_a_pack_maps_back_exactly_what_was_written(tmp_path: Path) -> None:
    arrays = _arrays()
    written = write_pack(tmp_path / "x.pack", arrays)
    table = read_table(tmp_path / "x.pack")
    assert table == written and set(table) == set(arrays)
    for key, array in arrays.items():
        mapped = table[key].map()
        assert isinstance(mapped, np.memmap) and mapped.dtype == array.dtype and table[key].offset % 64 == 0
        np.testing.assert_array_equal(mapped, array)
        with pytest.raises(ValueError, match="read-only"):
            mapped[...] = 0


def _table_of(whole: bytes, edit: Callable[[str], str]) -> bytes:
    """The pack with its JSON table edited (padded to the same length, so offsets still hold)."""
    length = struct.unpack("<Q", whole[8:16])[0]
    table = edit(whole[16 : 16 + length].decode())
    return whole[:8] + struct.pack("<Q", len(table)) + table.encode() + whole[16 + len(table) :]


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda whole: whole[:-10],
    "garbage": lambda whole: b"TTSBPACK" + whole[8:40],
    "empty": lambda whole: b"",
    "huge table length": lambda whole: whole[:8] + struct.pack("<Q", 2**63) + whole[16:],
    "unknown dtype": lambda whole: _table_of(whole, lambda table: table.replace('"<f4"', '"zz!"', 1)),
    "table not a mapping": lambda whole: _table_of(whole, lambda table: "[" + table[1:-1] + "]"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_pack_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "x.pack"
    write_pack(path, _arrays())
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises(PackError):
        read_table(path)


def test_a_pack_of_a_newer_format_is_skipped_not_removed(tmp_path: Path) -> None:
    cache = FeatureCache(AudioConfig(), tmp_path)
    cache.store({"d1": {"mel": np.ones((4, 80), np.float32)}})
    pack = cache.find("d1", "mel").pack
    pack.write_bytes(_table_of(pack.read_bytes(), lambda table: table.replace('"version":1', '"version":2')))
    with pytest.raises(NewerPackError):
        read_table(pack)
    reader = FeatureCache(AudioConfig(), tmp_path)
    assert reader.missing("d1", ["mel"]) == ["mel"] and pack.exists()


def test_a_removed_pack_leaves_its_features_found_in_a_duplicate(tmp_path: Path) -> None:
    """Two writers computed the same clip (two jobs at once): removing the pack in use leaves the
    key pointing at the other pack, not missing."""
    first, second = FeatureCache(AudioConfig(), tmp_path), FeatureCache(AudioConfig(), tmp_path)
    mel = np.ones((4, 80), np.float32)
    first.store({"d1": {"mel": mel}})
    second.store({"d1": {"mel": mel}, "d2": {"mel": mel}})
    reader = FeatureCache(AudioConfig(), tmp_path)
    reader.refresh()
    reader.find("d1", "mel").pack.unlink()
    reader.refresh()
    assert reader.find("d1", "mel") is not None and reader.find("d1", "mel").pack.exists()


def test_a_cache_sees_packs_another_writer_adds_and_forgets_removed_ones(tmp_path: Path) -> None:
    reader, writer = FeatureCache(AudioConfig(), tmp_path), FeatureCache(AudioConfig(), tmp_path)
    assert reader.missing("d1", ["mel"]) == ["mel"]  # no folder yet
    mel = np.ones((4, 80), np.float32)
    writer.store({"d1": {"mel": mel}, "d2": {"mel": 2 * mel}})
    assert reader.missing("d1", ["mel"]) == ["mel"]  # as of its last look
    reader.refresh()
    assert reader.missing("d1", ["mel", "linear"]) == ["linear"]
    np.testing.assert_array_equal(reader.find("d2", "mel").map(), 2 * mel)
    reader.find("d2", "mel").pack.unlink()
    writer.store({"d3": {"mel": mel}})  # within the same mtime tick, likely: listed again all the same
    reader.refresh()
    assert reader.find("d3", "mel") is not None and reader.missing("d1", ["mel"]) == ["mel"]


def test_a_killed_writers_temporary_pack_is_removed_once_abandoned(tmp_path: Path) -> None:
    cache = FeatureCache(AudioConfig(), tmp_path)
    cache.store({"d1": {"mel": np.ones((4, 80), np.float32)}})  # makes the folder
    abandoned, in_progress = cache.root / ".x.pack.k1ll3d.tmp", cache.root / ".y.pack.wr1t1n.tmp"
    for path in (abandoned, in_progress):
        path.write_bytes(b"TTSBPACK half a pack")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    FeatureCache(AudioConfig(), tmp_path).refresh()
    assert not abandoned.exists() and in_progress.exists()  # a live writer's file is left alone
