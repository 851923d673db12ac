"""A third-party system, installed by pip, found through the `ttsbench.models` entry point and trained."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The example plugin pip-installed into its own folder; the environment that sees it."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, work / "source")  # the build writes beside its sources: not in the repo
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True, timeout=300)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def ttsbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttsbench", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_installed_plugin_is_listed_and_trains(installed, tmp_path):
    listed = ttsbench(installed, "list")
    assert listed.returncode == 0, listed.stderr
    assert "conv-mas\tA convolutional TTS aligned by monotonic alignment search" in listed.stdout
    trained = ttsbench(installed, "train", "conv-mas", "--steps", "40", "--val-every", "20", "--threads", "1",
                       "--quiet", "--out", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5]) / 2  # it learns, not just runs
    validations = [json.loads(line) for line in (tmp_path / "run" / "val.jsonl").read_text().splitlines()]
    assert [v["step"] for v in validations] == [20, 40] and all(v["length_ratio"] > 0 for v in validations)


def test_without_the_plugin_the_system_is_unknown(tmp_path):
    """The entry point, not anything in ttsbench, is what registers it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = ttsbench(env, "train", "conv-mas", "--steps", "1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "unknown system 'conv-mas'" in result.stderr
