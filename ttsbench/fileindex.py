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

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
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
    written in batches, so a pass over a large corpus costs stat calls, not queries. Threads of a
    process share it (one lock, one connection); a forked child opens its own connection.
    """

    def __init__(self, database: Path):
        self.database = database
        self._facts: dict[tuple[FileKey, str], Any] | None = None
        self._pending: list[tuple[Any, ...]] = []
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._connected_in = 0  # the pid that opened `_connection`

    def _connect(self) -> sqlite3.Connection:
        """This process's connection, kept open for a pass: closing the last connection to the
        database checkpoints its WAL, with two fsyncs. One inherited through a fork is left
        alone, neither used nor closed (closing it could checkpoint and delete the WAL the
        parent still writes)."""
        if self._connection is not None and self._connected_in == os.getpid():
            return self._connection
        if self._connection is not None:
            _INHERITED.append(self._connection)
        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{self.database.parent}: the cache folder cannot be made ({err.strerror or err}); "
                            "set TTSBENCH_CACHE to a writable folder") from None
        with self._failing("cannot be opened"):
            connection = sqlite3.connect(self.database, timeout=60, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
        self._connection, self._connected_in = connection, os.getpid()
        return connection

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """A database error as a UserError naming the file (a locked, full or damaged index)."""
        try:
            yield
        except sqlite3.Error as err:
            raise UserError(f"{self.database}: the file index {what} ({err}); delete it to start a new one, "
                            "or wait for the other ttsbench process using it") from None

    def close(self) -> None:
        """Write the pending facts and close this process's connection (at the end of a pass)."""
        with self._lock:
            self.flush()
            if self._connection is not None and self._connected_in == os.getpid():
                self._connection.close()
                self._connection = None

    def _loaded(self) -> dict[tuple[FileKey, str], Any]:
        if self._facts is None:
            with self._failing("cannot be read"):
                rows = self._connect().execute("SELECT path, size, mtime_ns, inode, kind, value FROM facts").fetchall()
            self._facts = {((p, s, m, i), kind): json.loads(v) for p, s, m, i, kind, v in rows}
        return self._facts

    def lookup(self, path: Path, kind: str, compute: Callable[[Path], Any]) -> Any:
        """The stored `kind` fact of this version of `path`, else `compute(path)`, stored."""
        key = file_key(path)
        with self._lock:
            facts = self._loaded()
            if (key, kind) in facts:
                return facts[(key, kind)]
        value = compute(path)  # outside the lock: another thread may look up meanwhile
        self.store(key, kind, value)
        return value

    def has(self, path: Path, kinds: tuple[str, ...]) -> bool:
        """Whether every one of `kinds` is stored for this version of `path`."""
        key = file_key(path)
        with self._lock:
            facts = self._loaded()
            return all((key, kind) in facts for kind in kinds)

    def store(self, key: FileKey, kind: str, value: Any) -> None:
        """A fact computed elsewhere (a worker process) for the file version `key` it read."""
        with self._lock:
            self._loaded()[(key, kind)] = value
            self._pending.append((*key, kind, json.dumps(value)))
            if len(self._pending) >= _FLUSH_EVERY:
                self.flush()

    def flush(self) -> None:
        """Write the facts computed since the last flush (one transaction)."""
        with self._lock:
            if not self._pending:
                return
            with self._failing("cannot be written"), self._connect() as connection:
                connection.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?, ?)", self._pending)
            self._pending.clear()


_INHERITED: list[sqlite3.Connection] = []  # connections a forked child holds but must not use or close


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
