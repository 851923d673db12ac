"""Claims: the headline result behind each system, replayed on our data and judged from the rows.

A suite's `claims:` section names which of its variants play which part in each claim, e.g.

    claims:
      gradual_training: {gradual: tacotron-gradual, fixed: tacotron-r2}
      glow_speed:       {parallel: glow-tts, autoregressive: tacotron-gradual}
      dctts_fast:       {system: dc-tts, baseline: tacotron-gradual}
      sniper:           {sniper: fs2-sniper, dense: fs2-dense, constant: fs2-constant}
      rl_durations:     {published: rl-published, remedied: rl-remedied}

Every claim is made of checks; each check compares one per-seed quantity between two
variants by the spread of the seeds (min..max), never by one lucky run:
- "A lower than B" holds when every seed of A is below every seed of B, does not hold when
  every seed of A is above every seed of B (for "higher", mirrored), and is inconclusive when
  the two ranges overlap. "A no worse than B" (and "similar") holds unless A's whole range is
  worse than B's whole range.
A claim holds when all its checks hold, does not hold when any check does not, and is
inconclusive otherwise. Quantities a seed never reached (inf) compare as equal, so "neither
aligned within the budget" reads as inconclusive, not as a win.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ttsbench.metrics.summary import final_value, format_values, median_value, per_seed, time_to, variant_rows

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass
class Check:
    name: str
    rule: str
    verdict: str
    a: str
    b: str
    a_values: list[float]
    b_values: list[float]


@dataclass
class Verdict:
    claim: str
    title: str
    verdict: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gpu_scale: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One row per check: its rule, verdict and both sides' per-seed values."""
        return [
            {"claim": self.claim, "check": c.name, "rule": c.rule, "verdict": c.verdict, "a": c.a,
             "a_values": c.a_values, "b": c.b, "b_values": c.b_values}
            for c in self.checks
        ]


# --------------------------------------------------------------------------------------------
# Per-seed quantities only the claims use (the generic ones are in ttsbench.metrics.summary)


def early_mean(metric: str, fraction: float) -> Callable[[pd.DataFrame], float]:
    """Mean of a training curve over the first `fraction` of the seed's steps."""
    def quantity(rows: pd.DataFrame) -> float:
        curve = rows[rows["metric"] == metric].dropna(subset=["value", "step"])
        if curve.empty:
            return math.nan
        return float(curve[curve["step"] <= curve["step"].max() * fraction]["value"].mean())
    return quantity


def abs_log(quantity: Callable[[pd.DataFrame], float]) -> Callable[[pd.DataFrame], float]:
    return lambda rows: abs(math.log(quantity(rows))) if quantity(rows) > 0 else math.inf


def _networks(results: pd.DataFrame, variant: str) -> list[str]:
    """The separately trained networks of a variant, from its train/seconds/NETWORK rows."""
    metrics = variant_rows(results, variant)["metric"]
    prefix = "train/seconds/"
    return sorted({m[len(prefix):] for m in metrics if m.startswith(prefix)})


def intelligibility_notes(results: pd.DataFrame, variants: Sequence[str], thresholds: Mapping[str, float]) -> list[str]:
    """Per seed, the steps and seconds until validation WER first fell to `thresholds["wer"]`,
    and the test WER: reported beside a claim whose rule does not judge intelligibility."""
    if not (results["metric"] == "val/wer").any():
        return []
    target = thresholds.get("wer", 0.3)
    notes = []
    for variant in variants:
        steps = per_seed(results, variant, time_to("val/wer", target, False, "step"))
        seconds = per_seed(results, variant, time_to("val/wer", target, False, "seconds"))
        wer = per_seed(results, variant, final_value("summary/wer"))
        notes.append(f"{variant}: validation WER <= {target} at step {format_values(steps)}, "
                     f"training second {format_values(seconds)}; test WER {format_values(wer)}")
    return notes


# --------------------------------------------------------------------------------------------
# Comparing spreads


def _range(values: Sequence[float]) -> tuple[float, float]:
    return min(values), max(values)


def compare(a: Sequence[float], b: Sequence[float], lower_is_better: bool) -> str:
    """"better", "worse" or "overlap": A's seed range against B's, inf equal to inf."""
    if not a or not b or any(math.isnan(v) for v in [*a, *b]):
        return "missing"
    (a_lo, a_hi), (b_lo, b_hi) = _range(a), _range(b)
    if not lower_is_better:
        (a_lo, a_hi), (b_lo, b_hi) = (-a_hi, -a_lo), (-b_hi, -b_lo)
    if a_hi < b_lo:
        return "better"
    if a_lo > b_hi:
        return "worse"
    return "overlap"


def check_better(name: str, a: str, a_values: list[float], b: str, b_values: list[float], lower_is_better: bool,
                 what: str) -> Check:
    outcome = compare(a_values, b_values, lower_is_better)
    word = "lower" if lower_is_better else "higher"
    rule = f"{what}: every seed of {a} {word} than every seed of {b}"
    verdict = {"better": HOLDS, "worse": FAILS}.get(outcome, INCONCLUSIVE)
    return Check(name, rule, verdict, a, b, a_values, b_values)


def check_no_worse(name: str, a: str, a_values: list[float], b: str, b_values: list[float], lower_is_better: bool,
                   what: str) -> Check:
    outcome = compare(a_values, b_values, lower_is_better)
    rule = f"{what}: {a} no worse than {b} (fails only if every seed of {a} is worse than every seed of {b})"
    verdict = INCONCLUSIVE if outcome == "missing" else FAILS if outcome == "worse" else HOLDS
    return Check(name, rule, verdict, a, b, a_values, b_values)


@dataclass(frozen=True)
class Target:
    """A validation curve reaching a threshold, timed on one axis ("step" or "seconds").

    `network` times a system of several networks by that network's own training seconds
    (DC-TTS's Text2Mel aligns whatever SSRN does); a variant without such a network uses `axis`.
    """

    metric: str
    threshold: float
    higher: bool
    axis: str
    network: str | None = None


def time_on_clock(target: Target, clock: str) -> Callable[[pd.DataFrame], float]:
    """The value of the validation row `clock` (e.g. val/seconds/text2mel) where the curve first
    reaches the target; inf if it never does."""
    def quantity(rows: pd.DataFrame) -> float:
        step = time_to(target.metric, target.threshold, target.higher, "step")(rows)
        if not math.isfinite(step):
            return step
        value = rows.loc[(rows["metric"] == clock) & (rows["step"] == step), "value"]
        return float(value.iloc[0]) if len(value) else math.nan
    return quantity


def _timing(results: pd.DataFrame, variant: str, target: Target) -> tuple[list[float], list[float]]:
    """Per seed: when the variant reached the target, and how far its curve went, on its clock."""
    clock = f"val/seconds/{target.network}" if target.network else ""
    if clock and (variant_rows(results, variant)["metric"] == clock).any():
        return (per_seed(results, variant, time_on_clock(target, clock)),
                per_seed(results, variant, curve_span(clock, "value")))
    return (per_seed(results, variant, time_to(target.metric, target.threshold, target.higher, target.axis)),
            per_seed(results, variant, curve_span(target.metric, target.axis)))


def check_sooner(name: str, results: pd.DataFrame, a: str, b: str, target: Target, what: str) -> Check:
    """"A reaches the target in fewer steps (or seconds) than B", every seed against every seed.

    A seed that never reached it counts as later than any seed that did, but only if its run
    went on past the time that seed needed; a run stopped sooner says nothing (missing, so the
    check is inconclusive).
    """
    timing = {v: _timing(results, v, target) for v in (a, b)}
    times = {v: timing[v][0] for v in (a, b)}
    spans = {v: timing[v][1] for v in (a, b)}
    for side, other in ((a, b), (b, a)):
        reached = [t for t in times[other] if math.isfinite(t)]
        times[side] = [math.nan if math.isinf(t) and reached and span < max(reached) else t
                       for t, span in zip(times[side], spans[side])]
    return check_better(name, a, times[a], b, times[b], True, what)


def curve_span(metric: str, axis: str) -> Callable[[pd.DataFrame], float]:
    """How far (last step or training second) a seed's validation curve of `metric` went."""
    def quantity(rows: pd.DataFrame) -> float:
        values = rows.loc[rows["metric"] == metric, axis].dropna()
        return float(values.max()) if len(values) else math.nan
    return quantity


def combine(checks: Sequence[Check]) -> str:
    verdicts = [c.verdict for c in checks]
    if FAILS in verdicts:
        return FAILS
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE


# --------------------------------------------------------------------------------------------
# The five claims


def gradual_training(results: pd.DataFrame, roles: Mapping[str, str], thresholds: Mapping[str, float]) -> Verdict:
    gradual, fixed = roles["gradual"], roles["fixed"]
    align = thresholds["alignment"]
    # The claim is about validation MCD; a suite that does not score MCD during training (it is
    # slow) is judged on validation mel L1 after DTW instead, and the verdict says so.
    scored_mcd = bool((results["metric"] == "val/mcd").any())
    if scored_mcd:
        quality, target, quality_label = "val/mcd", thresholds["mcd"], "validation MCD (dB)"
    else:
        quality, target, quality_label = "val/mel_l1_dtw", thresholds["mel_l1_dtw"], "validation mel L1 (DTW)"
    # Judged on time to intelligible speech where validation scores WER: what the schedule is for.
    if (results["metric"] == "val/wer").any():
        quality, target, quality_label = "val/wer", thresholds["wer"], "validation WER"
    checks = []
    for axis, unit in (("step", "steps"), ("seconds", "training seconds")):
        checks.append(check_sooner(f"aligns sooner ({unit})", results, gradual, fixed,
                                   Target("val/diagonal_score", align, True, axis),
                                   f"{unit} until validation diagonal score >= {align}"))
        checks.append(check_sooner(f"reaches the quality target sooner ({unit})", results, gradual, fixed,
                                   Target(quality, target, False, axis), f"{unit} until {quality_label} <= {target}"))
    notes = ([] if scored_mcd or quality == "val/wer" else
             ["This suite does not score MCD during training (validation.metrics), so validation mel L1 "
              "after DTW stands in for validation MCD."])
    notes += intelligibility_notes(results, (gradual, fixed), thresholds)
    return Verdict("gradual_training", "Gradual training (r schedule) aligns and converges sooner than fixed r=2",
                   combine(checks), checks, notes,
                   "Coqui's schedule changes r at 10k-290k steps; a tiny run sees a compressed schedule.")


def glow_speed(results: pd.DataFrame, roles: Mapping[str, str], thresholds: Mapping[str, float]) -> Verdict:
    parallel, autoregressive = roles["parallel"], roles["autoregressive"]
    fast = per_seed(results, parallel, median_value("rtf/acoustic"))
    slow = per_seed(results, autoregressive, median_value("rtf/acoustic"))
    checks = [
        check_better("faster synthesis (acoustic RTF)", parallel, fast, autoregressive, slow, True,
                     "median acoustic-model RTF over test sentences of several lengths"),
        check_no_worse("similar quality (MCD)", parallel, per_seed(results, parallel, final_value("eval/mcd")),
                       autoregressive, per_seed(results, autoregressive, final_value("eval/mcd")), True,
                       "MCD on the test utterances"),
    ]
    if (results["metric"] == "summary/wer").any():
        checks.append(check_no_worse(
            "similar intelligibility (WER)", parallel, per_seed(results, parallel, final_value("summary/wer")),
            autoregressive, per_seed(results, autoregressive, final_value("summary/wer")), True,
            "Whisper WER (corpus rate) on the test utterances"))
    ratios = [s / f for s, f in zip(slow, fast) if f > 0]
    params = {v: per_seed(results, v, final_value("parameters"))[0] for v in (parallel, autoregressive)}
    notes = [f"speed-up (autoregressive RTF / parallel RTF) per seed: {', '.join(f'{r:.1f}x' for r in ratios)}; "
             "the paper reports 15.7x against Tacotron 2 on a GPU.",
             f"parameters: {parallel} {params[parallel]:,.0f}, {autoregressive} {params[autoregressive]:,.0f} "
             f"(ratio {params[parallel] / params[autoregressive]:.2f})."]
    if not 0.5 <= params[parallel] / params[autoregressive] <= 2:
        notes.append("parameter counts differ by more than 2x: not a matched comparison.")
    return Verdict("glow_speed", "Glow-TTS synthesises much faster than autoregressive Tacotron at similar quality",
                   combine(checks), checks, notes, "Speed holds at any scale; 'similar quality' needs trained models.")


def dctts_fast(results: pd.DataFrame, roles: Mapping[str, str], thresholds: Mapping[str, float]) -> Verdict:
    system, baseline = roles["system"], roles["baseline"]
    align = thresholds["alignment"]
    checks = [check_sooner("Text2Mel aligns sooner (training seconds)", results, system, baseline,
                           Target("val/diagonal_score", align, True, "seconds", network="text2mel"),
                           f"training seconds (Text2Mel's own for {system}) until validation diagonal "
                           f"score >= {align}")]
    if (results["metric"] == "val/wer").any():
        wer = thresholds["wer"]
        checks.append(check_sooner("speaks sooner (training seconds)", results, system, baseline,
                                   Target("val/wer", wer, False, "seconds"),
                                   f"training seconds (both networks for {system}) until validation WER <= {wer}"))
    notes = []
    for network in _networks(results, system):
        seconds = per_seed(results, system, final_value(f"train/seconds/{network}"))
        notes.append(f"{network}: {', '.join(f'{s:.0f}' for s in seconds)} training seconds per seed")
    notes.append("The paper: Text2Mel 27.9 h + SSRN 5.35 h on one GPU (cost table in the report).")
    notes += intelligibility_notes(results, (system, baseline), thresholds)
    return Verdict("dctts_fast", "DC-TTS trains quickly: Text2Mel aligns, and the pair speaks, sooner than Tacotron",
                   combine(checks),
                   checks, notes, "The published 15 h figure is for full LJSpeech on a GPU.")


def sniper(results: pd.DataFrame, roles: Mapping[str, str], thresholds: Mapping[str, float]) -> Verdict:
    sniper_v, dense, constant = roles["sniper"], roles["dense"], roles["constant"]
    final = final_value("val/mel_l1_dtw")
    checks = [
        check_better("lower training loss early", sniper_v, per_seed(results, sniper_v, early_mean("train/loss", 0.25)),
                     dense, per_seed(results, dense, early_mean("train/loss", 0.25)), True,
                     "mean training loss over the first quarter of steps"),
        check_better("better than constant sparsity at the end", sniper_v, per_seed(results, sniper_v, final),
                     constant, per_seed(results, constant, final), True, "final validation mel L1 (DTW)"),
        check_no_worse("no worse than dense at the end", sniper_v, per_seed(results, sniper_v, final), dense,
                       per_seed(results, dense, final), True, "final validation mel L1 (DTW)"),
    ]
    return Verdict("sniper", "SNIPER: lower loss than dense early; at the end better than constant sparsity, "
                   "no worse than dense", combine(checks), checks,
                   ["A sparse network's training loss is of the pruned network; the final comparisons use the "
                    "shared validation measure."],
                   "SNIPER's gains were at 8 k steps of a 384-wide model; the tiny preset compresses the schedule.")


def rl_durations(results: pd.DataFrame, roles: Mapping[str, str], thresholds: Mapping[str, float]) -> Verdict:
    published, remedied = roles["published"], roles["remedied"]
    error = abs_log(final_value("val/length_ratio"))
    limit = math.log(1.25)
    pub, rem = per_seed(results, published, error), per_seed(results, remedied, error)
    checks = [
        check_better("remedied durations closer to the recordings", remedied, rem, published, pub, True,
                     "final |ln(synthesised length / recorded length)| on validation"),
        Check("remedied learns durations", f"every seed of {remedied} within 25% of the recorded length",
              HOLDS if rem and max(rem) <= limit else FAILS if rem and min(rem) > limit else INCONCLUSIVE,
              remedied, "", rem, []),
        Check("published does not learn durations", f"every seed of {published} off by more than 25%",
              HOLDS if pub and min(pub) > limit else FAILS if pub and max(pub) <= limit else INCONCLUSIVE,
              published, "", pub, []),
    ]
    return Verdict("rl_durations", "RL durations: the published recipe does not learn durations; the remedied one does",
                   combine(checks), checks, [f"25% length error is |ln ratio| = {limit:.3f}."],
                   "Length error is decided within a few hundred steps; whether the remedied policy's durations "
                   "are good enough for intelligible speech needs a full run.")


ClaimRule = Callable[[pd.DataFrame, Mapping[str, str], Mapping[str, float]], Verdict]
CLAIMS: dict[str, tuple[tuple[str, ...], ClaimRule]] = {
    "gradual_training": (("gradual", "fixed"), gradual_training),
    "glow_speed": (("parallel", "autoregressive"), glow_speed),
    "dctts_fast": (("system", "baseline"), dctts_fast),
    "sniper": (("sniper", "dense", "constant"), sniper),
    "rl_durations": (("published", "remedied"), rl_durations),
}


def judge(results: pd.DataFrame, claims: Mapping[str, Mapping[str, str]], thresholds: Mapping[str, float]) -> list[Verdict]:
    """A verdict per claim of the suite; a claim whose variants have no rows is inconclusive, saying so."""
    verdicts = []
    for claim, roles in claims.items():
        needed, rule = CLAIMS[claim]
        missing_roles = [r for r in needed if r not in roles]
        if missing_roles:
            verdicts.append(Verdict(claim, claim, INCONCLUSIVE, notes=[f"the suite names no {', '.join(missing_roles)}"]))
            continue
        try:
            verdicts.append(rule(results, roles, thresholds))
        except LookupError as err:
            verdicts.append(Verdict(claim, claim, INCONCLUSIVE, notes=[str(err.args[0])]))
    return verdicts
