"""Where ttsbench keeps what it computes once for every run: features, generated corpora, the
file index and crash reports. Its own module, free of torch, so that the command line's error
boundary can name a crash file without importing the data layer."""

from __future__ import annotations

import functools
import os
import pwd
from pathlib import Path

from ttsbench.errors import UserError


def cache_root() -> Path:
    """~/.cache/ttsbench, or $TTSBENCH_CACHE: features/ and generated corpora/ live here."""
    return _cache_root(os.environ.get("TTSBENCH_CACHE"))


@functools.lru_cache(maxsize=8)
def _cache_root(configured: str | None) -> Path:
    """Memoised: looked up per file in a pass over 13,100 (Path.home() alone was ~1 s of it)."""
    root = Path(configured) if configured else _home() / ".cache" / "ttsbench"
    if root.exists() and not root.is_dir():
        source = "TTSBENCH_CACHE" if configured else "the default cache"
        raise UserError(f"{source} {root} is a file, not a folder; point TTSBENCH_CACHE at a folder")
    return root


def _home() -> Path:
    """The user's home: $HOME, or the password database's when HOME is unset or empty (an empty
    HOME would put the cache at /.cache)."""
    return Path(os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir)
