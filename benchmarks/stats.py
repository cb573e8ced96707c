"""Statistics over benchmark results: seed means with Student-t intervals, relative improvements, curves.

A *result* is one JSON record per (task, algorithm, seed) written by the runner (see ``runner.py``):
``{"task", "algorithm", "algo", "seed", "metrics", "base_metrics", "history", "tokens_generated",
"tokens_trained", "optimizer_steps", "wall_time_s", "config"}``. Everything here is a pure function of a
list of such dicts, so the report can be rebuilt from the files alone, without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

FORMULA = (
    "relative improvement of T over B on one cell (task) = (m_T − m_B) / |m_B|, where m is the metric's "
    "mean over seeds; the average over cells is the mean of the per-cell ratios (as in the paper's "
    "headline), not the ratio of the averaged metrics. A cell with m_B = 0, or where T or B lacks the "
    "metric, has no ratio (—) and is left out of the average, which says how many cells it used."
)

COMPUTE_KEYS = ("optimizer_steps", "tokens_generated", "tokens_trained", "wall_time_s")

Result = Mapping[str, Any]
Summary = dict[str, dict[str, dict[str, dict[str, Any]]]]


# ------------------------------------------------------------------------------------------ Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for aa in (even, odd):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=256)
def t_ppf(q: float, dof: float) -> float:
    """Quantile of Student's t, by bisection on the exact CDF (no scipy); accurate to ~1e-12."""
    if not 0.0 < q < 1.0 or dof <= 0:
        raise ValueError(f"t_ppf needs 0 < q < 1 and dof > 0, got q={q}, dof={dof}")
    if q < 0.5:
        return -t_ppf(1.0 - q, dof)
    lo, hi = 0.0, 2.0
    while t_cdf(hi, dof) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------ scalars
def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            continue
        if math.isfinite(float(v)):
            out.append(float(v))
    return out


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t interval, t_{(1+c)/2, n−1} · s / √n.

    Seeds are few (3–5), so the normal 1.96 would understate the uncertainty. Non-finite and
    non-numeric values are dropped first. n = 1 gives half-width nan (one seed says nothing about the
    spread); n = 0 gives (nan, nan).
    """
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t_ppf(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)


def relative_improvement(m: float, b: float) -> float:
    """(m − b) / |b|: the abs keeps the sign meaning "m is better" when the baseline is negative
    (NAG can be). b = 0 (or a non-finite input) has no defined ratio and gives nan."""
    if m is None or b is None or not (math.isfinite(m) and math.isfinite(b)) or b == 0:
        return math.nan
    return (m - b) / abs(b)


# ------------------------------------------------------------------------------------------ results
def unique_results(results: Iterable[Result]) -> list[Result]:
    """One record per (task, algorithm, seed), the last one winning (a rerun overwrites a cell)."""
    cells: dict[tuple[str, str, Any], Result] = {}
    for r in results:
        cells[(r["task"], r["algorithm"], r.get("seed"))] = r
    return list(cells.values())


def ordered(items: Iterable[str]) -> list[str]:
    """Distinct items in order of first appearance (the runner writes in config order)."""
    return list(dict.fromkeys(items))


def _stats(values: list[float], confidence: float = 0.95) -> dict[str, Any]:
    mean, half = mean_ci(values, confidence)
    return {"mean": mean, "ci95": half, "n": len(_finite(values)), "values": values}


def _seed_key(r: Result) -> tuple[int, float, str]:
    seed = r.get("seed")
    return (0, float(seed), "") if isinstance(seed, int | float) else (1, 0.0, str(seed))


def summarize(results: Iterable[Result], field: str = "metrics") -> Summary:
    """{task: {algorithm: {metric: {"mean", "ci95", "n", "values"}}}} over seeds.

    ``values`` are ordered by seed; a metric missing from some seeds is summarised over the seeds that
    have it (``n`` says how many). Tasks and algorithms keep their order of appearance.
    """
    results = unique_results(results)
    values: Summary = {t: {} for t in ordered(r["task"] for r in results)}
    for r in results:
        values[r["task"]].setdefault(r["algorithm"], {})
    for r in sorted(results, key=_seed_key):
        cell = values[r["task"]][r["algorithm"]]
        for metric, value in (r.get(field) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                cell.setdefault(metric, []).append(float(value))
    return {t: {a: {m: _stats(v) for m, v in ms.items()} for a, ms in algos.items()}
            for t, algos in values.items()}


def summarize_base(results: Iterable[Result]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {metric: stats}} of the base model's metrics over seeds.

    Every algorithm of a (task, seed) starts from the same base checkpoint, so its base metrics are
    averaged within the seed first; the interval is then over seeds, like the algorithms' rows.
    """
    per_seed: dict[str, dict[Any, dict[str, list[float]]]] = {}
    for r in unique_results(results):
        seed = per_seed.setdefault(r["task"], {}).setdefault(r.get("seed"), {})
        for metric, value in (r.get("base_metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                seed.setdefault(metric, []).append(float(value))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, seeds in per_seed.items():
        metrics = ordered(m for s in seeds.values() for m in s)
        by_seed = [seeds[k] for k in sorted(seeds, key=lambda k: _seed_key({"seed": k}))]
        rows = {m: [float(np.mean(s[m])) for s in by_seed if m in s] for m in metrics}
        if rows:
            out[task] = {m: _stats(v) for m, v in rows.items()}
    return out


def relative_table(summary: Summary, metric: str, baselines: Sequence[str] | None = None,
                   target: str = "grao") -> dict[str, Any]:
    """Relative improvement of ``target`` over each baseline, per cell (task) and averaged (see FORMULA).

    Returns ``{"metric", "target", "formula", "baselines": {b: {"cells": {task: {"target", "baseline",
    "rel"}}, "mean", "cells_used"}}}``; ``rel`` is nan where undefined. ``baselines=None`` means every
    other algorithm that shares a task with the target.
    """
    if baselines is None:
        baselines = ordered(a for algos in summary.values() if target in algos for a in algos if a != target)
    table: dict[str, Any] = {}
    for b in baselines:
        cells = {}
        for task, algos in summary.items():
            if target not in algos and b not in algos:
                continue
            m = algos.get(target, {}).get(metric, {}).get("mean", math.nan)
            base = algos.get(b, {}).get(metric, {}).get("mean", math.nan)
            cells[task] = {"target": m, "baseline": base, "rel": relative_improvement(m, base)}
        rels = [c["rel"] for c in cells.values() if math.isfinite(c["rel"])]
        mean = float(np.mean(rels)) if rels else math.nan
        table[b] = {"cells": cells, "mean": mean, "cells_used": len(rels)}
    return {"metric": metric, "target": target, "formula": FORMULA, "baselines": table}


def curves(results: Iterable[Result], key: str = "eval/reward", confidence: float = 0.95
           ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    """{task: {algorithm: (steps, mean, lo, hi)}} of a history key over seeds.

    Only steps at which every seed logged a finite value, so the mean never silently changes which
    seeds it averages. lo/hi are mean ∓ the t half-width (nan with one seed: no band).
    """
    runs: dict[str, dict[str, list[dict[int, float]]]] = {}
    for r in unique_results(results):
        series = {int(h["step"]): float(h[key]) for h in r.get("history") or []
                  if "step" in h and isinstance(h.get(key), int | float) and math.isfinite(h[key])}
        runs.setdefault(r["task"], {}).setdefault(r["algorithm"], []).append(series)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for task, algos in runs.items():
        for algo, seeds in algos.items():
            steps = sorted(set.intersection(*(set(s) for s in seeds)))
            if not steps:
                continue
            stats = [mean_ci([s[step] for s in seeds], confidence) for step in steps]
            mean = np.array([m for m, _ in stats])
            half = np.array([h for _, h in stats])
            out.setdefault(task, {})[algo] = (np.array(steps), mean, mean - half, mean + half)
    return out


def history_keys(results: Iterable[Result], prefix: str = "", suffix: str = "") -> list[str]:
    """History keys that start with ``prefix`` and end with ``suffix``, in order of appearance."""
    return ordered(k for r in results for h in r.get("history") or [] for k in h
                   if k.startswith(prefix) and k.endswith(suffix))


def compute_table(results: Iterable[Result]) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {algorithm: {optimizer_steps, tokens_generated, tokens_trained, wall_time_s, seeds}}},
    each the mean over seeds of the run's total (nan where no seed reported it)."""
    rows = summarize(({"task": r["task"], "algorithm": r["algorithm"], "seed": r.get("seed"),
                       "compute": {k: r.get(k) for k in COMPUTE_KEYS}} for r in results), field="compute")
    return {task: {algo: {**{k: stats.get(k, {}).get("mean", math.nan) for k in COMPUTE_KEYS},
                          "seeds": max((s["n"] for s in stats.values()), default=0)}
                   for algo, stats in algos.items()}
            for task, algos in rows.items()}


def compute_totals(table: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """{algorithm: totals over tasks} of ``compute_table`` (per-seed means summed over tasks)."""
    out: dict[str, dict[str, float]] = {}
    for algos in table.values():
        for algo, row in algos.items():
            tot = out.setdefault(algo, {k: 0.0 for k in COMPUTE_KEYS} | {"tasks": 0})
            for k in COMPUTE_KEYS:
                tot[k] += row[k]
            tot["tasks"] += 1
    return out
