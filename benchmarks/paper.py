"""The GRAO paper's reported numbers (Wang et al., arXiv 2508.07750, Table: RAS / NAG in %) as data.

Kept as data so the report can print them beside ours and so the headline relative improvements can
be recomputed with the *same* code as ours (``stats.relative_table``): the mean over the four
(model, subset) cells of (GRAO − baseline) / |baseline| for RAS gives SFT 57.7, DPO 17.7, PPO 6.8,
GRPO 6.4 — the paper claims 57.70, 17.65, 7.95, 5.18, so its PPO/GRPO numbers are not this formula.
"""

from __future__ import annotations

from typing import Any

from benchmarks.stats import relative_table

SOURCE = "Wang et al., 'Learning to Align, Aligning to Learn' (GRAO), arXiv 2508.07750, 2025"
JUDGE = "DeepSeek-V3 comparing each output with the Anthropic HH chosen answer"
MODELS = ("Qwen2.5-7B", "Moonlight-16B-A3B")
SUBSETS = ("helpful", "harmless")
ALGORITHMS = ("SFT", "DPO", "PPO", "GRPO", "GRAO")

# (model, HH subset) -> algorithm -> (RAS %, NAG %)
TABLE: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("Qwen2.5-7B", "helpful"): {
        "SFT": (30.95, 0.28), "DPO": (57.75, 54.12), "PPO": (60.87, 60.27), "GRPO": (60.89, 60.74),
        "GRAO": (64.60, 67.98)},
    ("Moonlight-16B-A3B", "helpful"): {
        "SFT": (43.45, -1.64), "DPO": (56.24, 26.20), "PPO": (64.37, 40.35), "GRPO": (68.89, 50.82),
        "GRAO": (70.84, 55.06)},
    ("Qwen2.5-7B", "harmless"): {
        "SFT": (51.43, 0.61), "DPO": (61.86, 25.32), "PPO": (66.11, 27.79), "GRPO": (65.61, 28.26),
        "GRAO": (68.01, 31.06)},
    ("Moonlight-16B-A3B", "harmless"): {
        "SFT": (60.52, 0.34), "DPO": (62.49, 3.98), "PPO": (70.97, 20.16), "GRPO": (68.08, 12.11),
        "GRAO": (76.82, 34.85)},
}
METRICS = ("ras", "nag")  # positions in the tuples above

# The paper's stated headline (% relative improvement of GRAO), method unstated.
CLAIMED_HEADLINE = {"SFT": 57.70, "DPO": 17.65, "PPO": 7.95, "GRPO": 5.18}
# Sample efficiency, as stated (no threshold or measurement given).
CLAIMED_STEPS = "GRAO reaches its optimum in ~50% fewer steps than GRPO"
CLAIMED_STEP_SAVING = 0.5
# Ablations, helpful NAG, as stated (% change; whether relative or in points is not said).
CLAIMED_ABLATIONS = {"no_imitation": -7.8, "no_exploration": -12.8, "no_regularizer": -13.0}


def cell_name(model: str, subset: str) -> str:
    return f"{model} {subset}"


def value(model: str, subset: str, algorithm: str, metric: str) -> float:
    """One number of the table, in %."""
    return TABLE[(model, subset)][algorithm][METRICS.index(metric.lower())]


def as_summary(metric: str = "ras") -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """The table in ``stats.summarize``'s shape, one pseudo-task per (model, subset) cell, n = 1."""
    i = METRICS.index(metric.lower())
    return {cell_name(*cell): {algo: {metric: {"mean": v[i], "ci95": float("nan"), "n": 1, "values": [v[i]]}}
                               for algo, v in row.items()}
            for cell, row in TABLE.items()}


def headline(metric: str = "ras", target: str = "GRAO") -> dict[str, float]:
    """{baseline: mean over the 4 cells of (target − baseline) / |baseline|, in %} (stats.FORMULA)."""
    table = relative_table(as_summary(metric), metric, [a for a in ALGORITHMS if a != target], target)
    return {b: 100.0 * row["mean"] for b, row in table["baselines"].items()}
