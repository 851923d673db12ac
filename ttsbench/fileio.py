"""Writes that a kill cannot tear, and JSON-lines reads that survive one.

Runs are killed (Ctrl-C, SIGKILL, a lost node) and resumed; every file the harness writes in
place goes through a temporary file in the same folder and an atomic rename, so a reader sees
the old file or the new one, never half of either.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ttsbench.errors import UserError


class DamagedFileError(UserError, ValueError):
    """A file ttsbench wrote that no longer parses: named, with where it stops parsing."""


def _read_umask() -> int:
    """The process's umask (read once: setting it to read it is not thread-safe later on)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file: others can read results


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renamed onto `path` only if the block succeeds.

    The file gets the umask's mode, as a plain open() would (mkstemp makes it private, which
    left results, checkpoints and feature packs unreadable to the other users of a shared run
    folder or cache)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError:  # the folder is made on first use, not checked on every write
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:  # a full disk says ENOSPC without a path: name the file being written
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def foreign_entries(root: Path, marker: str, ours: tuple[str, ...] = ()) -> list[str]:
    """What a folder holds that ttsbench did not write: its entries (less `ours`) when it lacks
    the `marker` file a ttsbench command leaves in the folders it owns; [] for such a folder,
    an empty one, or none. Commands refuse to write into a folder this names anything in."""
    if not root.is_dir() or (root / marker).is_file():
        return []
    return sorted(p.name for p in root.iterdir() if p.name not in ours)


def sha256_file(path: str | Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks: weights files are tens of MB."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path, expected: type = object) -> Any:
    """A JSON file ttsbench wrote, or one clear error naming it when it is damaged (an edit,
    a disk fault) or not of the `expected` type, instead of a parser traceback."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except UnicodeDecodeError as err:
        raise DamagedFileError(f"{path}: damaged, not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DamagedFileError(f"{path}: damaged, not JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                               "restore it, or start a new folder") from None
    if not isinstance(data, expected):
        raise DamagedFileError(f"{path}: damaged, expected a JSON {expected.__name__}, got {type(data).__name__}")
    return data


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] if it does not exist), up to the first torn line.

    A line cut by a kill mid-append can only be the last one written; it and anything after it
    are dropped rather than trusted.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
