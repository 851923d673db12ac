"""Facts about a file computed once per version of it, kept on disk across runs and processes.

Reading every sample of 13,100 clips (to validate them) and hashing every byte (to key the
feature cache) costs seconds to minutes per pass; each job and each `ttsbench run` used to pay
it again. A file's facts are stored under the key (absolute path, size, mtime in ns, inode): an
edited or replaced file has a new key, so a stale fact is never used, and an unchanged one is
looked up instead of recomputed.

The index is one SQLite database (`cache_root()/files.sqlite`): it is safe with several job
processes reading and writing it at once, and a killed process loses only facts it had not yet
written, which are computed again. Its transactions are committed without an fsync (WAL with
synchronous=NORMAL: a crash of the process loses nothing committed, a power cut may lose the last
commits, which are recomputed): on ext4 each fsync also forced out the feature packs written
since the last one, and the main process of `data prepare`, waiting for it, left its workers
without chunks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttsbench.errors import UserError

FileKey = tuple[str, int, int, int]
_SCHEMA = ("CREATE TABLE IF NOT EXISTS facts (path TEXT, size INTEGER, mtime_ns INTEGER, inode INTEGER, "
           "kind TEXT, value TEXT, PRIMARY KEY (path, size, mtime_ns, inode, kind))")
_FLUSH_EVERY = 512  # facts written per transaction while a long pass is running


def file_key(path: Path) -> FileKey:
    """What identifies one version of a file without reading it. The absolute path, not the
    resolved one: resolving costs a system call per path component, and a file reached through
    two spellings merely gets two entries."""
    absolute = os.path.abspath(path)
    stat = os.stat(absolute)
    return absolute, stat.st_size, stat.st_mtime_ns, stat.st_ino


class FileIndex:
    """A persistent memo of `kind -> value` facts per file version; values are JSON.

    The whole table is read on first use (one query; 26,000 facts take ~0.1 s) and new facts are
    written in batches, so a pass over a large corpus costs stat calls, not queries.
    """

    def __init__(self, database: Path):
        self.database = database
        self._facts: dict[tuple[FileKey, str], Any] | None = None
        self._pending: list[tuple[Any, ...]] = []
        self._connections: dict[tuple[int, int], sqlite3.Connection] = {}  # by (pid, thread) that opened it

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection, kept open for a pass: closing the last connection to the
        database checkpoints its WAL, with two fsyncs. Another thread, or a forked child, opens its
        own (a connection is not used across threads or forks)."""
        opener = _opener()
        if opener in self._connections:
            return self._connections[opener]
        self.database.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(self.database, timeout=60, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise UserError(f"{self.database}: the file index cannot be opened ({err}); delete it to start "
                            "a new one") from None
        self._connections[opener] = connection
        return connection

    def close(self) -> None:
        """Write the pending facts and close this process's connections (at the end of a pass). A
        connection inherited through a fork is left alone, neither closed nor released: closing it
        here could checkpoint and delete the WAL the parent still writes."""
        self.flush()
        ours = [opener for opener in self._connections if opener[0] == os.getpid()]
        for opener in ours:
            self._connections.pop(opener).close()

    def _loaded(self) -> dict[tuple[FileKey, str], Any]:
        if self._facts is None:
            rows = self._connect().execute("SELECT path, size, mtime_ns, inode, kind, value FROM facts").fetchall()
            self._facts = {((p, s, m, i), kind): json.loads(v) for p, s, m, i, kind, v in rows}
        return self._facts

    def lookup(self, path: Path, kind: str, compute: Callable[[Path], Any]) -> Any:
        """The stored `kind` fact of this version of `path`, else `compute(path)`, stored."""
        key = file_key(path)
        facts = self._loaded()
        if (key, kind) not in facts:
            self.store(key, kind, compute(path))
        return facts[(key, kind)]

    def has(self, path: Path, kinds: tuple[str, ...]) -> bool:
        """Whether every one of `kinds` is stored for this version of `path`."""
        key, facts = file_key(path), self._loaded()
        return all((key, kind) in facts for kind in kinds)

    def store(self, key: FileKey, kind: str, value: Any) -> None:
        """A fact computed elsewhere (a worker process) for the file version `key` it read."""
        self._loaded()[(key, kind)] = value
        self._pending.append((*key, kind, json.dumps(value)))
        if len(self._pending) >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the facts computed since the last flush (one transaction)."""
        if not self._pending:
            return
        with self._connect() as connection:
            connection.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?, ?)", self._pending)
        self._pending.clear()


def _opener() -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


_INDEXES: dict[Path, FileIndex] = {}


def file_index(root: Path) -> FileIndex:
    """The process's index under `root` (one per cache root, so a changed TTSBENCH_CACHE is honoured)."""
    if root not in _INDEXES:
        _INDEXES[root] = FileIndex(root / "files.sqlite")
    return _INDEXES[root]


def flush_all() -> None:
    """Write every index's pending facts and close its connection (called at the end of each pass
    over a corpus)."""
    for index in _INDEXES.values():
        index.close()
