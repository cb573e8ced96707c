"""Statistics over benchmark results: seed means with Student-t intervals, relative improvements, curves,
paired comparisons over the same eval prompts (bootstrap interval, P(A>B), minimum detectable effect) and
sample efficiency (AUC, steps and tokens to a threshold).

A *result* is one JSON record per (task, algorithm, seed) written by the runner (see ``runner.py``):
``{"task", "algorithm", "algo", "seed", "metrics", "base_metrics", "history", "tokens_generated",
"tokens_trained", "optimizer_steps", "wall_time_s", "config"}``, since schema 2 also ``"examples"`` and
``"base_examples"`` (one record per eval prompt, see ``textenv.evaluate_examples``) and ``"subset_key"``.
On a multi-turn task (``"multiturn": true``) an eval "prompt" is an episode on one eval row
(``algos.multiturn_eval``): its records carry each episode's value of every ``EPISODE_METRICS`` metric
under the metric's name, so they pair up and compare like the prompts of a single-turn eval.
Everything here is a pure function of a list of such dicts, so the report can be rebuilt from the files
alone, without torch; bootstrap draws come from a fixed seed, so the same files give the same report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.integrate
import scipy.stats

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
def t_ppf(q: float, dof: float) -> float:
    """Quantile of Student's t (``scipy.stats.t.ppf``), with a clear error for an impossible request."""
    if not 0.0 < q < 1.0 or dof <= 0:
        raise ValueError(f"t_ppf needs 0 < q < 1 and dof > 0, got q={q}, dof={dof}")
    return float(scipy.stats.t.ppf(q, dof))


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


def subset_title(label: str, key: str | None) -> str:
    """A subset's heading: the task's subset key and the label ("op = +"), or the label alone when the key
    just says "subset"."""
    return f"Subset `{label}`" if not key or key == "subset" else f"Subset `{key} = {label}`"


def metric_title(metric: str, subset_key: str | None) -> str:
    """"reward" stays; "+/reward" reads "reward, subset `op = +`"."""
    group, _, leaf = metric.rpartition("/")
    if not group:
        return metric
    title = subset_title(group, subset_key)
    return f"{leaf}, {title[0].lower()}{title[1:]}"


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


# ------------------------------------------------------------------------------------------ paired
BASE = "base model"  # the entry name of the base model's eval records in ``prompt_records``
# Multi-turn metrics (``algos.multiturn_eval``) beside a task's reward; single-turn records have none of them.
EPISODE_METRICS = ("success_rate", "turns", "invalid_rate", "tool_calls", "tool_success")
PAIRED_METRICS = ("reward", "ras", "nag", *EPISODE_METRICS)
BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0
POWER = 0.80
ALPHA = 0.05
# (z_{1−α/2} + z_{power}) = 1.960 + 0.842 = 2.80: an effect this many standard errors away from 0 is
# detected by a two-sided test at level α with probability ``POWER``.
MDE_FACTOR = float(scipy.stats.norm.ppf(1 - ALPHA / 2) + scipy.stats.norm.ppf(POWER))
NEAR_ZERO = 0.05  # |baseline mean| below this makes (m − b)/|b| explode: the ratio is flagged
PAIRED_METHOD = (
    "Paired differences: A and B are evaluated on the same eval prompts with the same sampling seed for "
    "each training seed, so d[s, i] = x_A[s, i] − x_B[s, i] for seed s and prompt i, and the reported "
    "difference is the mean of d. 95% interval: percentile bootstrap over seeds and prompts together "
    f"({BOOTSTRAP_SAMPLES} replicates, fixed seed {BOOTSTRAP_SEED}, so the report is deterministic): each "
    "replicate resamples the seeds, then the prompts, with replacement, and one prompt draw serves every "
    "drawn seed, because the prompts are shared (a prompt that is easy for A is easy in every seed), which "
    "resampling them per seed would hide (Owen's pigeonhole bootstrap for crossed factors; it errs wide, "
    "never narrow: it counts the per-prompt noise up to 3 times). ✓ = the interval excludes 0. "
    "P(A>B) (Agarwal et al. 2021) = the fraction of (run of A, run of B) pairs over seeds in which A's "
    "mean over the eval prompts is higher, ties counting ½. MDE (minimum detectable effect) = "
    f"{MDE_FACTOR:.2f} × SE, SE = the standard deviation of the bootstrap replicates (the same variance the "
    f"interval uses): a true difference this large is found significant with probability {POWER:.0%} "
    f"(two-sided α = {ALPHA}). A non-significant difference smaller than the MDE says the run could not tell, "
    "not that there is no difference."
)


def prompt_records(results: Iterable[Result]) -> dict[str, dict[str, dict[Any, list[Mapping[str, Any]]]]]:
    """{task: {entry: {seed: per-prompt eval records}}}; the base model's under ``BASE``.

    Results without ``examples`` (written before schema 2) are left out: they have no paired evidence.
    """
    out: dict[str, dict[str, dict[Any, list[Mapping[str, Any]]]]] = {}
    for r in sorted(unique_results(results), key=_seed_key):
        task = out.setdefault(r["task"], {})
        if r.get("examples"):
            task.setdefault(r["algorithm"], {})[r.get("seed")] = r["examples"]
        if r.get("base_examples"):
            task.setdefault(BASE, {}).setdefault(r.get("seed"), r["base_examples"])
    return {t: entries for t, entries in out.items() if entries}


def paired_matrix(a: Mapping[Any, Sequence[Mapping[str, Any]]], b: Mapping[Any, Sequence[Mapping[str, Any]]],
                  metric: str) -> np.ndarray:
    """d[s, i] = a − b of ``metric`` over the seeds both have (in order) and the prompts both score.

    ``metric`` may name a subset, "helpful/ras", which keeps that subset's prompts. A prompt whose value is
    missing in any seed (e.g. RAS without a reference) is left out. Records are paired by position and
    must hold the same prompt; anything else is an error that names the seed and the index.
    """
    subset, _, key = metric.rpartition("/")
    seeds = [s for s in a if s in b]
    rows = []
    for seed in seeds:
        ra, rb = a[seed], b[seed]
        if len(ra) != len(rb):
            raise ValueError(f"seed {seed}: {len(ra)} eval records vs {len(rb)}; paired statistics need the "
                             "same eval prompts")
        row = []
        for i, (x, y) in enumerate(zip(ra, rb, strict=True)):
            if x.get("prompt") != y.get("prompt"):
                raise ValueError(f"seed {seed}, eval record {i}: prompts differ ({x.get('prompt')!r} vs "
                                 f"{y.get('prompt')!r}); paired statistics need the same eval prompts")
            keep = not subset or x.get("subset") == subset
            xv, yv = x.get(key), y.get(key)
            row.append(xv - yv if keep and _is_value(xv) and _is_value(yv) else math.nan)
        rows.append(row)
    if not rows:
        return np.empty((0, 0))
    if len({len(r) for r in rows}) > 1:
        raise ValueError(f"seeds {seeds} have different numbers of eval records; paired statistics need the "
                         "same eval prompts in every seed")
    d = np.array(rows, dtype=float)
    return d[:, ~np.isnan(d).any(axis=0)]


def _is_value(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def crossed_se(d: np.ndarray) -> float:
    """Model-based standard error of the mean of a seeds × prompts matrix, for planning run sizes.

    Two-way random effects (seeds crossed with prompts): SE² = σ²_seed/S + σ²_prompt/P + σ²_resid/(S·P),
    the components from the ANOVA mean squares (negative estimates set to 0). With one seed or one prompt
    the design has one factor: SE = sd / √n of the values.
    """
    S, P = d.shape
    if d.size < 2:
        return math.nan
    if S < 2 or P < 2:
        return float(np.std(d, ddof=1) / math.sqrt(d.size))
    grand, seed_means, prompt_means = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seed = P * np.sum((seed_means - grand) ** 2) / (S - 1)
    ms_prompt = S * np.sum((prompt_means - grand) ** 2) / (P - 1)
    resid = d - seed_means[:, None] - prompt_means[None, :] + grand
    ms_resid = np.sum(resid ** 2) / ((S - 1) * (P - 1))
    var_seed = max(0.0, (ms_seed - ms_resid) / P)
    var_prompt = max(0.0, (ms_prompt - ms_resid) / S)
    return float(math.sqrt(var_seed / S + var_prompt / P + ms_resid / (S * P)))


def bootstrap_means(d: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Means of ``samples`` replicates of ``d`` with seeds (rows) and prompts (columns) resampled.

    A replicate's mean is wᵀ d v / (S·P) with multinomial resampling counts w (seeds) and v (prompts),
    the same as indexing the drawn rows and columns, without building the S×P replicate.
    """
    S, P = d.shape
    rng = np.random.default_rng(seed)
    w = rng.multinomial(S, np.full(S, 1.0 / S), size=samples)
    v = rng.multinomial(P, np.full(P, 1.0 / P), size=samples)
    return np.einsum("rp,rp->r", w @ d, v) / (S * P)


def probability_of_improvement(x: Iterable[float], y: Iterable[float]) -> float:
    """P(X > Y) over every pair (run of X, run of Y), a tie counting ½ (Agarwal et al. 2021); nan if empty."""
    xs, ys = np.array(_finite(x)), np.array(_finite(y))
    if not xs.size or not ys.size:
        return math.nan
    return float(np.mean((xs[:, None] > ys[None, :]) + 0.5 * (xs[:, None] == ys[None, :])))


def paired_difference(d: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """{"diff", "lo", "hi", "significant", "se", "mde", "se_model", "seeds", "prompts"} of a seeds × prompts
    matrix of paired differences (see PAIRED_METHOD; ``se_model`` is ``crossed_se``)."""
    S, P = d.shape if d.ndim == 2 else (0, 0)
    if d.size == 0:
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan, "significant": False, "se": math.nan,
                "mde": math.nan, "se_model": math.nan, "seeds": S, "prompts": P}
    boot = bootstrap_means(d)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    se = float(np.std(boot, ddof=1))
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "significant": bool(lo > 0 or hi < 0),
            "se": se, "mde": MDE_FACTOR * se, "se_model": crossed_se(d), "seeds": S, "prompts": P}


def seed_scores(records: Mapping[Any, Sequence[Mapping[str, Any]]], metric: str) -> list[float]:
    """The metric's mean over a run's eval prompts, one value per seed (for P(A>B))."""
    subset, _, key = metric.rpartition("/")
    out = []
    for rows in records.values():
        values = [r[key] for r in rows if _is_value(r.get(key)) and (not subset or r.get("subset") == subset)]
        if values:
            out.append(float(np.mean(values)))
    return out


def compare(records: Mapping[str, Mapping[Any, Sequence[Mapping[str, Any]]]], a: str, b: str,
            metric: str) -> dict[str, Any] | None:
    """Paired comparison of entry ``a`` with ``b`` on ``metric`` (None where either lacks it)."""
    if a not in records or b not in records:
        return None
    d = paired_matrix(records[a], records[b], metric)
    if d.size == 0:
        return None
    return {"a": a, "b": b, "metric": metric, **paired_difference(d),
            "p_improve": probability_of_improvement(seed_scores(records[a], metric), seed_scores(records[b], metric))}


def paired_table(results: Iterable[Result], metrics: Sequence[str] = PAIRED_METRICS,
                 first: Sequence[str] = ()) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{task: {metric: [comparison, ...]}}: every algorithm against the base model, then every pair.

    Algorithms named in ``first`` (the report's targets) lead each pair, so their rows read "target − other".
    """
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, records in prompt_records(results).items():
        entries = [e for e in records if e != BASE]
        order = [*(e for e in first if e in entries), *(e for e in entries if e not in first)]
        pairs = [(e, BASE) for e in order] + [(x, y) for i, x in enumerate(order) for y in order[i + 1:]]
        for metric in metrics:
            rows = [c for x, y in pairs if (c := compare(records, x, y, metric)) is not None]
            # A metric that never differs (RAS where nothing can beat the reference) says nothing.
            if any(c["diff"] != 0 or c["se"] != 0 for c in rows):
                out.setdefault(task, {})[metric] = rows
    return out


# ------------------------------------------------------------------------------------------ sample efficiency
THRESHOLD_FRACTION = 0.9


def run_curve(r: Result, key: str = "eval/reward") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, values, generated tokens up to each step) of one run; step 0 is the base model's value
    (every run starts from it) when the record has it and ``key`` is ``eval/<metric>``."""
    history = r.get("history") or []
    points = {int(h["step"]): float(h[key]) for h in history if "step" in h and _is_value(h.get(key))}
    base = (r.get("base_metrics") or {}).get(key.removeprefix("eval/")) if key.startswith("eval/") else None
    if points and _is_value(base) and min(points) > 0:
        points[0] = float(base)
    steps = np.array(sorted(points), dtype=float)
    per_step = {int(h["step"]): float(h.get("tokens/generated", 0.0) or 0.0) for h in history if "step" in h}
    tokens = np.array([sum(v for s, v in per_step.items() if s <= step) for step in steps])
    return steps, np.array([points[int(s)] for s in steps]), tokens


def curve_auc(steps: np.ndarray, values: np.ndarray) -> float:
    """Area under the curve divided by the steps it spans (the curve's mean height; trapezoid rule)."""
    if len(steps) == 0:
        return math.nan
    if len(steps) == 1:
        return float(values[0])
    return float(scipy.integrate.trapezoid(values, steps) / (steps[-1] - steps[0]))


def first_reach(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """Index of the first point at or above ``threshold``; None if never reached."""
    hits = np.flatnonzero(values >= threshold)
    return int(hits[0]) if hits.size else None


def threshold_of(finals: Iterable[float], base: float = math.nan, fraction: float = THRESHOLD_FRACTION) -> float:
    """The level "reached" means: ``fraction`` of the best gain over the base model, base + f·(best − base).

    Measured from the base, because a base model that already scores 0.7 would "reach" 90% of a best of
    0.74 at step 0. nan when no algorithm ends above the base (nothing to reach). Without a base value:
    ``fraction`` of the best itself, best − (1 − f)·|best| (right for negative rewards too).
    """
    xs = _finite(finals)
    if not xs:
        return math.nan
    best = max(xs)
    if not _is_value(base):
        return best - (1 - fraction) * abs(best)
    return base + fraction * (best - base) if best > base else math.nan


def sample_efficiency(results: Iterable[Result], key: str = "eval/reward", fraction: float = THRESHOLD_FRACTION
                      ) -> dict[str, dict[str, Any]]:
    """Per task: the threshold (``threshold_of``), and per algorithm AUC, steps and generated tokens to reach
    it, over seeds.

    ``{task: {"threshold", "best_final", "base", "algorithms": {algo: {"auc", "steps", "tokens": stats over seeds,
    "reached": k, "seeds": n, "per_seed": [{"seed", "auc", "steps", "tokens"}]}}}}``. Steps and tokens
    average only the seeds that reached the threshold; ``reached`` < ``seeds`` says how many did not
    (not reached is a result: steps None; with no threshold nothing is reached).
    """
    results = unique_results(results)
    runs: dict[str, dict[str, list[tuple[Any, tuple[np.ndarray, np.ndarray, np.ndarray]]]]] = {}
    for r in sorted(results, key=_seed_key):
        curve = run_curve(r, key)
        if len(curve[0]):
            runs.setdefault(r["task"], {}).setdefault(r["algorithm"], []).append((r.get("seed"), curve))
    base = summarize_base(results)
    out: dict[str, dict[str, Any]] = {}
    for task, algos in runs.items():
        finals = {a: float(np.mean([c[1][-1] for _, c in seeds])) for a, seeds in algos.items()}
        best = max(finals.values())
        base_value = base.get(task, {}).get(key.removeprefix("eval/"), {}).get("mean", math.nan)
        threshold = threshold_of(finals.values(), base_value if key.startswith("eval/") else math.nan, fraction)
        table = {}
        for algo, seeds in algos.items():
            per_seed = []
            for seed, (steps, values, tokens) in seeds:
                i = first_reach(steps, values, threshold)
                per_seed.append({"seed": seed, "auc": curve_auc(steps, values), "final": float(values[-1]),
                                 "steps": None if i is None else float(steps[i]),
                                 "tokens": None if i is None else float(tokens[i])})
            reached = [p for p in per_seed if p["steps"] is not None]
            table[algo] = {"auc": _stats([p["auc"] for p in per_seed]),
                           "steps": _stats([p["steps"] for p in reached]),
                           "tokens": _stats([p["tokens"] for p in reached]),
                           "reached": len(reached), "seeds": len(per_seed), "per_seed": per_seed}
        out[task] = {"key": key, "fraction": fraction, "best_final": best, "base": base_value,
                     "threshold": threshold, "algorithms": table}
    return out
