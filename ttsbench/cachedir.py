"""Where ttsbench keeps what it computes once for every run: features, generated corpora, the
file index and crash reports. Its own module, free of torch, so that the command line's error
boundary can name a crash file without importing the data layer."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def cache_root() -> Path:
    """~/.cache/ttsbench, or $TTSBENCH_CACHE: features/ and generated corpora/ live here."""
    return _cache_root(os.environ.get("TTSBENCH_CACHE"))


@functools.lru_cache(maxsize=8)
def _cache_root(configured: str | None) -> Path:
    """Memoised: looked up per file in a pass over 13,100 (Path.home() alone was ~1 s of it)."""
    return Path(configured) if configured else Path.home() / ".cache" / "ttsbench"
