"""Verdict rules on planted numbers: every claim can hold, fail, or be inconclusive."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ttsbench.claims import FAILS, HOLDS, INCONCLUSIVE, compare, judge

THRESHOLDS = {"alignment": 0.5, "duration_change": 1.0, "mel_l1_dtw": 1.0, "mcd": 8.0}


def rows(variant: str, seed: int, metric: str, values, steps=None, seconds=None, item: str = ""):
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    steps = steps or [100 * (i + 1) for i in range(len(values))]
    seconds = seconds or [10.0 * s / 100 for s in steps]
    return [{"variant": variant, "system": variant, "seed": seed, "metric": metric, "value": v, "step": st,
             "seconds": se, "item": item} for v, st, se in zip(values, steps, seconds)]


def frame(*groups) -> pd.DataFrame:
    return pd.DataFrame([r for group in groups for r in group])


def test_compare_reads_seed_ranges():
    assert compare([1, 2], [3, 4], lower_is_better=True) == "better"
    assert compare([3, 4], [1, 2], lower_is_better=True) == "worse"
    assert compare([1, 3], [2, 4], lower_is_better=True) == "overlap"
    assert compare([5, 6], [1, 2], lower_is_better=False) == "better"
    assert compare([math.inf, math.inf], [math.inf], lower_is_better=True) == "overlap"  # neither got there
    assert compare([100.0], [math.inf], lower_is_better=True) == "better"


def alignment_curve(variant, seed, first_aligned_step):
    """Diagonal score 0.2 until `first_aligned_step`, 0.7 from then on (and mel L1 likewise)."""
    steps = [100, 200, 300, 400]
    diag = [0.7 if s >= first_aligned_step else 0.2 for s in steps]
    mel = [0.8 if s >= first_aligned_step else 2.0 for s in steps]
    return rows(variant, seed, "val/diagonal_score", diag, steps) + rows(variant, seed, "val/mel_l1_dtw", mel, steps)


@pytest.mark.parametrize("gradual_steps, fixed_steps, expected", [
    ((100, 200), (300, 400), HOLDS),
    ((300, 400), (100, 200), FAILS),
    ((100, 300), (200, 400), INCONCLUSIVE),
    ((10**9, 10**9), (10**9, 10**9), INCONCLUSIVE),  # neither aligns within the budget
])
def test_gradual_training(gradual_steps, fixed_steps, expected):
    results = frame(*[alignment_curve("grad", seed, s) for seed, s in enumerate(gradual_steps)],
                    *[alignment_curve("fixed", seed, s) for seed, s in enumerate(fixed_steps)])
    [verdict] = judge(results, {"gradual_training": {"gradual": "grad", "fixed": "fixed"}}, THRESHOLDS)
    assert verdict.verdict == expected
    assert len(verdict.checks) == 4  # alignment and mel target, each in steps and in seconds


def test_gradual_training_reads_validation_mcd_when_the_suite_scored_it():
    """Mel L1 says gradual wins; MCD, the claim's own measure, says it loses: MCD decides."""
    results = frame(*[alignment_curve("grad", seed, 100) for seed in (0, 1)],
                    *[alignment_curve("fixed", seed, 400) for seed in (0, 1)])
    steps = [100, 200, 300, 400]
    mcd = {"grad": [12.0, 12.0, 12.0, 7.0], "fixed": [7.0, 7.0, 7.0, 7.0]}
    results = pd.concat([results, frame(*[rows(v, seed, "val/mcd", mcd[v], steps) for v in mcd for seed in (0, 1)])])
    [verdict] = judge(results, {"gradual_training": {"gradual": "grad", "fixed": "fixed"}}, THRESHOLDS)
    quality = [c for c in verdict.checks if "quality target" in c.name]
    assert len(quality) == 2 and all("MCD" in c.rule for c in quality)
    assert all(c.verdict == FAILS for c in quality)
    assert verdict.verdict == FAILS
    assert not any("stands in" in note for note in verdict.notes)
    without = results[results["metric"] != "val/mcd"]
    [fallback] = judge(without, {"gradual_training": {"gradual": "grad", "fixed": "fixed"}}, THRESHOLDS)
    assert fallback.verdict == HOLDS and any("stands in" in note for note in fallback.notes)


def speed_rows(variant, seed, rtf, mcd, parameters=1000):
    return (rows(variant, seed, "rtf/acoustic", rtf, [None], [None], "s1")
            + rows(variant, seed, "eval/mcd", mcd, [None], [None], "u1")
            + rows(variant, seed, "parameters", parameters))


@pytest.mark.parametrize("glow, taco, expected", [
    ([(0.01, 8.0), (0.012, 8.5)], [(0.2, 8.2), (0.25, 8.1)], HOLDS),       # much faster, similar MCD
    ([(0.01, 12.0), (0.012, 12.5)], [(0.2, 8.2), (0.25, 8.1)], FAILS),      # faster but clearly worse
    ([(0.3, 8.0), (0.35, 8.5)], [(0.2, 8.2), (0.25, 8.1)], FAILS),          # slower
    ([(0.01, 8.0), (0.3, 8.5)], [(0.2, 8.2), (0.25, 8.1)], INCONCLUSIVE),   # speed ranges overlap
])
def test_glow_speed(glow, taco, expected):
    results = frame(*[speed_rows("glow", s, r, m) for s, (r, m) in enumerate(glow)],
                    *[speed_rows("taco", s, r, m) for s, (r, m) in enumerate(taco)])
    [verdict] = judge(results, {"glow_speed": {"parallel": "glow", "autoregressive": "taco"}}, THRESHOLDS)
    assert verdict.verdict == expected
    assert any("speed-up" in note for note in verdict.notes)


def dc_rows(variant, seed, aligned_at_seconds):
    steps = [100, 200, 300]
    seconds = [50.0, 100.0, 150.0]
    diag = [0.7 if s >= aligned_at_seconds else 0.1 for s in seconds]
    return (rows(variant, seed, "val/diagonal_score", diag, steps, seconds)
            + rows(variant, seed, "train/seconds/text2mel", 120.0) + rows(variant, seed, "train/seconds/ssrn", 30.0))


@pytest.mark.parametrize("dc, taco, expected", [
    ((50, 50), (150, 150), HOLDS),
    ((150, 150), (50, 100), FAILS),
    ((50, 150), (100, 100), INCONCLUSIVE),
])
def test_dctts_fast(dc, taco, expected):
    results = frame(*[dc_rows("dc", s, a) for s, a in enumerate(dc)], *[dc_rows("taco", s, a) for s, a in enumerate(taco)])
    [verdict] = judge(results, {"dctts_fast": {"system": "dc", "baseline": "taco"}}, THRESHOLDS)
    assert verdict.verdict == expected


def sniper_rows(variant, seed, early_loss, final_mel):
    steps = [1, 2, 3, 4, 5, 6, 7, 8]
    loss = [early_loss] * 2 + [1.0] * 6
    return rows(variant, seed, "train/loss", loss, steps) + rows(variant, seed, "val/mel_l1_dtw", [3.0, final_mel], [4, 8])


@pytest.mark.parametrize("planted, expected", [
    ({"sn": [(2.0, 1.0), (2.1, 1.1)], "dense": [(3.0, 1.05), (3.1, 1.0)], "const": [(2.5, 1.5), (2.6, 1.6)]}, HOLDS),
    # at the end clearly worse than dense
    ({"sn": [(2.0, 1.5), (2.1, 1.6)], "dense": [(3.0, 1.0), (3.1, 1.1)], "const": [(2.5, 1.8), (2.6, 1.9)]}, FAILS),
    # early losses overlap with dense; the rest holds
    ({"sn": [(2.0, 1.0), (3.5, 1.1)], "dense": [(3.0, 1.05), (3.1, 1.0)], "const": [(2.5, 1.5), (2.6, 1.6)]},
     INCONCLUSIVE),
])
def test_sniper(planted, expected):
    results = frame(*[sniper_rows(v, s, e, f) for v, seeds in planted.items() for s, (e, f) in enumerate(seeds)])
    [verdict] = judge(results, {"sniper": {"sniper": "sn", "dense": "dense", "constant": "const"}}, THRESHOLDS)
    assert verdict.verdict == expected


@pytest.mark.parametrize("published, remedied, expected", [
    ((2.0, 0.4), (1.05, 0.95), HOLDS),       # published 2x / 0.4x off, remedied within 5 %
    ((1.05, 0.95), (1.02, 1.0), FAILS),      # published also learns
    ((2.0, 0.4), (1.05, 1.6), INCONCLUSIVE),  # remedied seeds disagree
])
def test_rl_durations(published, remedied, expected):
    results = frame(*[rows("pub", s, "val/length_ratio", [3.0, r]) for s, r in enumerate(published)],
                    *[rows("rem", s, "val/length_ratio", [3.0, r]) for s, r in enumerate(remedied)])
    [verdict] = judge(results, {"rl_durations": {"published": "pub", "remedied": "rem"}}, THRESHOLDS)
    assert verdict.verdict == expected


def test_a_claim_without_rows_says_so():
    results = frame(rows("a", 0, "val/length_ratio", 1.0))
    [verdict] = judge(results, {"rl_durations": {"published": "a", "remedied": "missing"}}, THRESHOLDS)
    assert verdict.verdict == INCONCLUSIVE
    assert "missing" in verdict.notes[0]


@pytest.mark.parametrize("dctts_last_second, expected", [
    (60.0, FAILS),  # ran on past the 20 s Tacotron needed and never aligned: later
    (10.0, INCONCLUSIVE),  # stopped at 10 s, before Tacotron's 20 s: says nothing
])
def test_never_reaching_counts_only_when_the_run_went_on_long_enough(dctts_last_second, expected):
    dctts_seconds = [dctts_last_second / 2, dctts_last_second]
    results = frame(*[rows("dc", seed, "val/diagonal_score", [0.1, 0.2], [100, 200], dctts_seconds) for seed in (0, 1)],
                    *[rows("taco", seed, "val/diagonal_score", [0.2, 0.7], [100, 200], [10.0, 20.0]) for seed in (0, 1)])
    [verdict] = judge(results, {"dctts_fast": {"system": "dc", "baseline": "taco"}}, THRESHOLDS)
    assert verdict.verdict == expected


def test_dctts_fast_times_text2mel_on_its_own_clock_and_the_pair_on_all_seconds():
    """DC-TTS aligns at total second 150 but Text2Mel's own second 40 (SSRN took the rest): the
    alignment check reads Text2Mel's clock and holds against Tacotron at 100 s; the pair speaks at
    total second 150, later than Tacotron's 100, so the intelligibility check does not hold."""
    steps, seconds = [100, 200], [60.0, 150.0]
    dc = [rows("dc", seed, "val/diagonal_score", [0.1, 0.7], steps, seconds)
          + rows("dc", seed, "val/seconds/text2mel", [20.0, 40.0], steps, seconds)
          + rows("dc", seed, "val/wer", [1.0, 0.1], steps, seconds) for seed in (0, 1)]
    taco = [rows("taco", seed, "val/diagonal_score", [0.1, 0.7], steps, [50.0, 100.0])
            + rows("taco", seed, "val/wer", [1.0, 0.1], steps, [50.0, 100.0]) for seed in (0, 1)]
    [verdict] = judge(frame(*dc, *taco), {"dctts_fast": {"system": "dc", "baseline": "taco"}},
                      {**THRESHOLDS, "wer": 0.2})
    assert [(c.name, c.verdict, c.a_values) for c in verdict.checks] == [
        ("Text2Mel aligns sooner (training seconds)", HOLDS, [40.0, 40.0]),
        ("speaks sooner (training seconds)", FAILS, [150.0, 150.0]),
    ]
    assert verdict.verdict == FAILS


def test_gradual_training_is_judged_on_time_to_intelligible_when_validation_scored_wer():
    results = frame(*[alignment_curve("grad", seed, 100) + rows("grad", seed, "val/wer", [1.0, 0.1, 0.0, 0.0],
                                                                [100, 200, 300, 400]) for seed in (0, 1)],
                    *[alignment_curve("fixed", seed, 100) + rows("fixed", seed, "val/wer", [1.0, 1.0, 1.0, 0.1],
                                                                 [100, 200, 300, 400]) for seed in (0, 1)])
    [verdict] = judge(results, {"gradual_training": {"gradual": "grad", "fixed": "fixed"}}, {**THRESHOLDS, "wer": 0.2})
    target = [c for c in verdict.checks if c.name == "reaches the quality target sooner (steps)"]
    assert target[0].a_values == [200.0, 200.0] and target[0].b_values == [400.0, 400.0]
    assert "validation WER" in target[0].rule and target[0].verdict == HOLDS


def test_the_readme_gets_one_row_per_check_in_the_suites_own_block(tmp_path):
    from ttsbench.claims import Check, Verdict
    from ttsbench.report import VERDICT_LEGEND, update_readme
    from ttsbench.report.table import markdown_rows, verdict_rows

    verdict = Verdict("gradual_training", "Gradual training converges sooner", FAILS, [
        Check("sooner (steps)", "rule", FAILS, "gradual", "fixed", [1600.0, 1400.0], [600.0, math.inf]),
        Check("learns", "rule", HOLDS, "remedied", "", [0.03], []),
    ])
    rows = verdict_rows([verdict])
    assert rows[0] == {"claim": "Gradual training converges sooner", "verdict": FAILS, "check": "sooner (steps)",
                       "result": FAILS, "per seed": "gradual: 1,600, 1,400; fixed: 600, never"}
    assert rows[1]["claim"] == "" and rows[1]["per seed"] == "remedied: 0.03"
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- results:start -->\nold summary\n<!-- results:end -->\n"
                      "<!-- results:claims:start -->\nold verdicts\n<!-- results:claims:end -->\nend\n")
    update_readme(readme, markdown_rows(rows), {"name": "claims"}, {"commit": "abc"}, VERDICT_LEGEND)
    text = readme.read_text()
    assert "old summary" in text and "old verdicts" not in text and text.endswith("end\n")
    assert VERDICT_LEGEND in text and "| Gradual training converges sooner | does not hold |" in text
