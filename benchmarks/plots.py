"""PNG plots of benchmark results: learning curves with 95% CI bands, final metrics, GRAO loss-term shares,
paired differences with their intervals.

Figures are built with the object-oriented API on the Agg canvas (no pyplot, no global backend switch),
so plotting works headless and never touches a user's interactive backend. Each algorithm keeps one
colour across all figures.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from algos.errors import cleanup, writing
from benchmarks.stats import (
    EPISODE_METRICS,
    Result,
    curves,
    history_keys,
    metric_title,
    ordered,
    paired_table,
    summarize,
    summarize_base,
    unique_results,
)

# The final-metrics panels: the main metrics, and a multi-turn task's episode metrics (single-turn has none).
MAIN_METRICS = ("reward", "ras", "tie", "nag", *EPISODE_METRICS)
BASE_COLOR = "0.55"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def palette(algorithms: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A stable colour per algorithm (tab10, then tab20 for long lists)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(algorithms) <= 10 else "tab20"]
    return {a: cmap(i % cmap.N) for i, a in enumerate(algorithms)}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Atomic PNG write (temp file + rename). A failure (a full disk, say) is an ``OutputError`` naming
    ``path``, not the temp file, and leaves no temp file behind."""
    with writing(path, "plot"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
        os.close(fd)
        with cleanup(lambda: Path(tmp).unlink(missing_ok=True), f"removing the temp file {tmp}", only_on_error=True):
            fig.savefig(tmp, format="png")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    return path


def _band(ax, steps, mean, lo, hi, color, label: str) -> None:
    ax.plot(steps, mean, color=color, label=label, lw=1.8, marker="o" if len(steps) <= 12 else None, ms=3)
    if np.isfinite(lo).any():
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)


def plot_curves(results: Sequence[Result], out_dir: Path, colors: dict[str, tuple[float, ...]]) -> list[Path]:
    """Per task: eval reward vs step (left) and training reward/mean vs step (right), mean ± 95% CI."""
    panels = [("eval/reward", "Evaluation reward"), ("reward/mean", "Training reward (batch mean)")]
    data = {key: curves(results, key) for key, _ in panels}
    base = summarize_base(results)
    files = []
    for task in ordered(r["task"] for r in results):
        if not any(task in d for d in data.values()):
            continue
        fig = new_figure(12, 4.5)
        axes = fig.subplots(1, 2)
        for ax, (key, title) in zip(axes, panels, strict=True):
            for algo, (steps, mean, lo, hi) in data[key].get(task, {}).items():
                _band(ax, steps, mean, lo, hi, colors[algo], algo)
            base_reward = base.get(task, {}).get("reward", {}).get("mean")
            if key == "eval/reward" and base_reward is not None and math.isfinite(base_reward):
                ax.axhline(base_reward, color=BASE_COLOR, ls="--", lw=1.2, label="base model")
            if not ax.lines:
                ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
            ax.set(title=title, xlabel="optimizer step", ylabel=key)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(f"{task}: learning curves (mean over seeds, shaded 95% CI)")
        files.append(save(fig, out_dir / f"curves_{slug(task)}.png"))
    return files


def plot_final(results: Sequence[Result], out_dir: Path, colors: dict[str, tuple[float, ...]]) -> list[Path]:
    """Per task: one small panel per main metric (overall and per subset), bars = base + algorithms."""
    summary, base = summarize(results), summarize_base(results)
    files = []
    for task, algos in summary.items():
        subset_key = next((r["subset_key"] for r in results if r["task"] == task and r.get("subset_key")), None)
        names = ordered(m for s in [*algos.values(), base.get(task, {})] for m in s)
        metrics = [m for m in names if m.rpartition("/")[2] in MAIN_METRICS]
        if not metrics:
            continue
        rows = [("base model", base.get(task, {}), BASE_COLOR),
                *((a, s, colors[a]) for a, s in algos.items())]
        ncols = min(4, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        fig = new_figure(3.2 * ncols + 0.5, 3.3 * nrows + 0.6)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax, metric in zip(axes, metrics, strict=False):
            labels = [name for name, _, _ in rows]
            means = [s.get(metric, {}).get("mean", np.nan) for _, s, _ in rows]
            errs = [s.get(metric, {}).get("ci95", np.nan) for _, s, _ in rows]
            x = np.arange(len(rows))
            ax.bar(x, np.nan_to_num(means), yerr=np.array(errs, dtype=float), capsize=3,
                   color=[c for _, _, c in rows], edgecolor="black", lw=0.5)
            for xi, m in zip(x, means, strict=True):
                if not np.isfinite(m):
                    ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=8)
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
            ax.set_title(metric_title(metric, subset_key).replace("`", ""), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        fig.suptitle(f"{task}: final metrics (mean over seeds, error bars 95% CI)")
        files.append(save(fig, out_dir / f"final_{slug(task)}.png"))
    return files


def plot_shares(results: Sequence[Result], out_dir: Path) -> list[Path]:
    """Per task: GRAO's loss-term shares |term| / Σ|terms| over training, one panel per algorithm entry."""
    keys = history_keys(results, prefix="grao/", suffix="_share")
    if not keys:
        return []
    data = {k: curves(results, k) for k in keys}
    labels = {k: k.removeprefix("grao/").removesuffix("_share") for k in keys}
    files = []
    for task in ordered(r["task"] for r in results):
        algos = ordered(a for k in keys for a in data[k].get(task, {}))
        if not algos:
            continue
        fig = new_figure(4.8 * len(algos) + 0.5, 4.0)
        axes = np.atleast_1d(fig.subplots(1, len(algos), squeeze=False)).ravel()
        for ax, algo in zip(axes, algos, strict=True):
            present = [k for k in keys if algo in data[k].get(task, {})]
            by_step = {k: dict(zip(*(x.tolist() for x in data[k][task][algo][:2]), strict=True))
                       for k in present}
            steps = sorted(set.intersection(*(set(d) for d in by_step.values())))
            series = [np.array([by_step[k][s] for s in steps]) for k in present]
            if all((s >= 0).all() for s in series):
                ax.stackplot(steps, *series, labels=[labels[k] for k in present], alpha=0.85)
                ax.set_ylim(0, max(1.0, float(np.sum(series, axis=0).max())) if steps else 1.0)
            else:
                for k, s in zip(present, series, strict=True):
                    ax.plot(steps, s, label=labels[k])
            ax.set(title=algo, xlabel="optimizer step", ylabel="share of |loss terms|")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper right")
        fig.suptitle(f"{task}: GRAO loss-term shares (mean over seeds)")
        files.append(save(fig, out_dir / f"shares_{slug(task)}.png"))
    return files


def plot_paired(results: Sequence[Result], out_dir: Path, first: Sequence[str] = ()) -> list[Path]:
    """Per task: each paired difference (A − B over the same prompts and seeds) with its 95% interval;
    algorithms in ``first`` lead their pairs, as in the report."""
    files = []
    for task, by_metric in paired_table(results, first=first).items():
        fig = new_figure(4.6 * len(by_metric) + 0.5, 0.45 * max(len(c) for c in by_metric.values()) + 1.6)
        axes = np.atleast_1d(fig.subplots(1, len(by_metric), squeeze=False)).ravel()
        for ax, (metric, comparisons) in zip(axes, by_metric.items(), strict=True):
            y = np.arange(len(comparisons))[::-1]
            diff = np.array([c["diff"] for c in comparisons])
            err = np.array([[c["diff"] - c["lo"] for c in comparisons], [c["hi"] - c["diff"] for c in comparisons]])
            colors = ["tab:green" if c["significant"] and c["diff"] > 0 else "tab:red" if c["significant"]
                      else "0.4" for c in comparisons]
            for yi, d, e0, e1, color in zip(y, diff, *err, colors, strict=True):
                ax.errorbar(d, yi, xerr=[[e0], [e1]], fmt="o", color=color, capsize=3)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(y, [f"{c['a']} − {c['b']}" for c in comparisons], fontsize=8)
            ax.set(title=metric, xlabel="paired difference (95% interval)")
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(f"{task}: paired differences over the same eval prompts and seeds")
        files.append(save(fig, out_dir / f"paired_{slug(task)}.png"))
    return files


def make_plots(results: Iterable[Result], out_dir: str | Path, first: Sequence[str] = ()) -> list[Path]:
    """Write every plot under ``out_dir``; returns the PNG paths written."""
    results = unique_results(results)
    out_dir = Path(out_dir)
    colors = palette(ordered(r["algorithm"] for r in results))
    return [*plot_curves(results, out_dir, colors), *plot_final(results, out_dir, colors),
            *plot_shares(results, out_dir), *plot_paired(results, out_dir, first)]
