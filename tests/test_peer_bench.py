"""The peer comparison's bookkeeping: ratios, table, report section, run order (no coqui needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from jinja2 import Environment, PackageLoader, select_autoescape

from ttsbench.report import peer_section
from ttsbench.report.peer import PEER_RESULTS, Comparison, load, markdown_table, ratio_agreement, summarize

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = [
    Comparison("glow-tts", "glow-tts", (), "glow-tts", "same architecture"),
    Comparison("fs2 dense", "fastspeech2-sniper", ("sparsity_variant=dense",), "fastspeech2-sniper", "aligner <both>"),
]


def run(side: str, variant: str, median: float, parameters: int = 28_600_000) -> dict:
    return {"side": side, "variant": variant, "parameters": parameters, "median_s": median,
            "seconds": [median * 2, median], "torch_version": "2.13.0+cpu"}


def results() -> dict:
    ours = {"glow-tts": [run("ttsbench", "glow-tts", m) for m in (1.0, 1.2, 1.1)],
            "fs2 dense": [run("ttsbench", "fs2 dense", m, 38_100_000) for m in (2.0, 2.0, 2.0)]}
    coqui = {"glow-tts": [run("coqui-tts", "glow-tts", m) for m in (1.5, 1.4, 1.6)],
             "fastspeech2-sniper": [run("coqui-tts", "fastspeech2-sniper", m, 38_000_000) for m in (2.4, 2.6, 2.5)]}
    settings = {"threads": 1, "rounds": 3, "steps": 5, "warmup": 1, "batch": {"batch": 8, "tokens": 60, "frames": 240},
                "torch": {"ttsbench": "2.13.0+cpu", "coqui-tts": "2.13.0+cpu"}, "coqui_tts_version": "0.28.0",
                "commit": "abc123"}
    return summarize(COMPARISONS, ours, coqui, settings)


def test_ratio_is_the_median_of_each_rounds_ratio_with_every_run_kept():
    rows = {row["variant"]: row for row in results()["comparisons"]}
    glow = rows["glow-tts"]
    assert glow["ours"]["run_medians_s"] == [1.0, 1.2, 1.1] and glow["ours"]["median_s"] == 1.1
    assert glow["coqui"]["median_s"] == 1.5
    assert glow["round_ratios"] == pytest.approx([1.5, 1.4 / 1.2, 1.6 / 1.1])
    assert glow["ratio"] == pytest.approx(1.6 / 1.1)  # the median round, not 1.5 / 1.1
    assert glow["ratio_of_medians"] == pytest.approx(1.5 / 1.1)
    assert rows["fs2 dense"]["ratio"] == pytest.approx(1.25)
    assert rows["fs2 dense"]["overrides"] == ["sparsity_variant=dense"]


def test_markdown_table_has_one_row_per_comparison_and_says_how_it_was_measured():
    table = markdown_table(results())
    lines = table.splitlines()
    assert lines[0].startswith("| system | parameters | ttsbench s | coqui-tts s | ratio |")
    assert "| glow-tts | 28.60 M / 28.60 M | 1.100 (1.000-1.200) | 1.500 (1.400-1.600) | 1.45x (1.17-1.50) |" in table
    assert "| fs2 dense | 38.10 M / 38.00 M |" in table and "| 1.25x (1.20-1.30) |" in table
    assert "3 alternating runs" in lines[-1] and "batch 8 x 60 tokens x 240 frames" in lines[-1]


def test_ratio_agreement_between_two_runs():
    first, second = results(), results()
    second["comparisons"][0]["ratio"] *= 1.05
    agreement = ratio_agreement(first, second)
    assert agreement["glow-tts"] == pytest.approx(0.05) and agreement["fs2 dense"] == 0.0


def test_results_file_is_loaded_only_when_present_and_of_this_schema(tmp_path):
    assert load(tmp_path / PEER_RESULTS) is None
    (tmp_path / PEER_RESULTS).write_text(json.dumps({**results(), "schema": 99}))
    assert load(tmp_path / PEER_RESULTS) is None
    (tmp_path / PEER_RESULTS).write_text(json.dumps(results()))
    assert load(tmp_path / PEER_RESULTS)["comparisons"][0]["variant"] == "glow-tts"


def render_section(peer: dict | None) -> str:
    templates = Environment(loader=PackageLoader("ttsbench", "report/templates"),
                            autoescape=select_autoescape(default=True))
    return templates.get_template("peer.html.j2").render(peer=peer)


def test_report_section_appears_with_the_results_file_and_escapes_its_text(tmp_path):
    assert peer_section(tmp_path) is None
    assert 'id="peer"' not in render_section(None)
    assert '{% include "peer.html.j2" %}' in (ROOT / "ttsbench/report/templates/report.html.j2").read_text()
    (tmp_path / PEER_RESULTS).write_text(json.dumps(results()))
    section = peer_section(tmp_path)
    assert [row["system"] for row in section["rows"]] == ["glow-tts", "fs2 dense"]
    html = render_section(section)
    assert 'id="peer"' in html
    assert "1.45x (1.17-1.50)" in html and "aligner &lt;both&gt;" in html


def load_driver():
    spec = importlib.util.spec_from_file_location("peer_bench_driver", ROOT / "peer" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_driver_alternates_which_side_goes_first_every_round(monkeypatch):
    driver = load_driver()
    order: list[str] = []

    def fake_ours(args, comparison, env):
        order.append(f"ours:{comparison.variant}")
        return run("ttsbench", comparison.variant, 1.0)

    def fake_coqui(args, system, env):
        order.append(f"coqui:{system}")
        return run("coqui-tts", system, 1.5)

    monkeypatch.setattr(driver, "run_ours", fake_ours)
    monkeypatch.setattr(driver, "run_coqui", fake_coqui)
    args = Namespace(threads=1, rounds=2, steps=1, warmup=1, quiet=True)
    ours, coqui = driver.measure(args, COMPARISONS)
    assert order == ["ours:glow-tts", "coqui:glow-tts", "ours:fs2 dense", "coqui:fastspeech2-sniper",
                     "coqui:glow-tts", "ours:glow-tts", "coqui:fastspeech2-sniper", "ours:fs2 dense"]
    assert len(ours["fs2 dense"]) == 2 and len(coqui["fastspeech2-sniper"]) == 2
    environment_ours, environment_coqui = driver.environments(1)
    assert environment_ours["OMP_NUM_THREADS"] == environment_coqui["OMP_NUM_THREADS"] == "1"
    assert environment_coqui["PYTHONPATH"].endswith("stubs") and environment_ours["PYTHONPATH"] == str(ROOT)


def _learning_rows(variant: str, seed: int, reached: list[float], seconds: float) -> list[dict]:
    """A job's result rows: val/wer at steps 200, 400, ... (training second = step / 2), its total time."""
    base = {"run_id": "r", "job": f"{variant}_seed{seed}", "system": variant, "variant": variant, "seed": seed,
            "config_hash": "h", "item": "", "text": None}
    rows = [{**base, "metric": "val/wer", "value": wer, "step": 200 * (i + 1), "seconds": 100.0 * (i + 1)}
            for i, wer in enumerate(reached)]
    return rows + [{**base, "metric": "train/seconds", "value": seconds, "step": 200 * len(reached),
                    "seconds": seconds}]


def test_peer_table_sets_each_pair_side_by_side_with_the_ratio_of_times_to_intelligible():
    import pandas as pd

    from ttsbench.report.table import peer_table

    rows = (_learning_rows("glow-tts", 0, [0.9, 0.1], 200) + _learning_rows("glow-tts", 1, [0.1], 100)
            + _learning_rows("coqui-glow", 0, [0.9, 0.9, 0.15], 300) + _learning_rows("coqui-glow", 1, [0.9, 0.9, 0.9, 0.1], 400)
            + _learning_rows("tacotron", 0, [0.5, 0.1], 200) + _learning_rows("coqui-tacotron", 0, [1.0, 1.0, 1.0], 540))
    table = peer_table(pd.DataFrame(rows), [("glow-tts", "coqui-glow"), ("tacotron", "coqui-tacotron"),
                                            ("missing", "coqui-glow")], {"wer": 0.2, "alignment": 0.5,
                                                                         "duration_change": 1.0})
    assert [row["ttsbench / peer"] for row in table] == ["glow-tts / coqui-glow", "tacotron / coqui-tacotron"]
    glow, tacotron = table
    assert glow["intelligible s"] == "150 (100–200) / 350 (300–400)"
    assert glow["ratio"] == "2.33x"  # 350 / 150
    # a peer that never got there: its whole training time counts, so the ratio is a lower bound
    assert tacotron["intelligible s"] == "200 / never" and tacotron["ratio"] == ">2.70x"  # 540 / 200
