"""Turn a list of result records into ``report.md`` + ``report.json`` (+ PNG plots).

The report has to make the comparison visibly controlled and its numbers checkable: the shared setup,
mean ± 95% CI over seeds of every metric, paired comparisons on the same eval prompts (interval, P(A>B),
minimum detectable effect), relative improvements with the formula spelled out, the per-cell numbers and
the absolute difference shown, sample efficiency beside the paper's claim, a few answers side by side,
and the compute each algorithm used. Missing values print as "—".

A multi-turn task's eval is one episode per eval row (``algos.multiturn_eval``). Its main metric is
``reward``, the mean episode return: the quantity the algorithms train on (GRPO's outcome reward), defined for
every task however it pays (a discounted GuessNumber pays less for more guesses, which a success rate would
not see), and the one the relative improvements, learning curves and sample efficiency read, as for a
single-turn task. Beside it the results show ``success_rate``, ``turns`` (per episode), ``invalid_rate`` (per
turn), ``tool_calls`` and ``tool_success`` (calls that did not error), each with its mean ± CI over seeds and,
in a table of its own, its paired difference from the base model over the same episodes (interval, ✓).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from algos.errors import cleanup, writing
from benchmarks import paper
from benchmarks.stats import (
    BASE,
    COMPUTE_KEYS,
    EPISODE_METRICS,
    FORMULA,
    MDE_FACTOR,
    NEAR_ZERO,
    PAIRED_METHOD,
    THRESHOLD_FRACTION,
    Result,
    compare,
    compute_table,
    compute_totals,
    metric_title,
    ordered,
    paired_table,
    prompt_records,
    relative_table,
    sample_efficiency,
    subset_title,
    summarize,
    summarize_base,
    unique_results,
)

DASH = "—"
MAIN_METRICS = ("reward", "ras", "tie", "nag")
# Column order in the results tables: a multi-turn task's episode metrics follow its reward (single-turn
# tasks have none of them, so their order is MAIN_METRICS').
COLUMN_ORDER = ("reward", *EPISODE_METRICS, "ras", "tie", "nag")
REL_METRICS = ("reward", "ras", "nag")  # leaf names; "tie" has no better direction
# Setup rows -> config keys: dotted paths from the config's root first (the runner's layout:
# base_model, budget.*, eval.*, hyperparameters.*), then bare names searched breadth-first.
SETUP_KEYS: dict[str, tuple[str, ...]] = {
    "base model": ("base_model", "base.model", "model", "model_name"),
    "base checkpoint (SHA-256 of its weights)": ("base_sha256",),
    "optimizer steps": ("budget.steps", "steps", "total_steps", "max_steps"),
    "prompts per step": ("budget.prompts_per_step", "prompts_per_step", "hyperparameters.batch_size",
                         "batch_size"),
    "group size G": ("budget.group_size", "hyperparameters.group_size", "group_size", "num_generations"),
    "max new tokens": ("budget.max_new_tokens", "max_new_tokens"),
    "sampling temperature (training)": ("hyperparameters.temperature",),
    "eval prompts": ("eval.prompts", "eval_prompts", "num_eval_prompts"),
    "eval temperature": ("eval.temperature",),
    "eval every (steps)": ("eval.every",),
    "max turns per episode": ("max_turns",),
}
OPTIONAL_SETUP = {"max turns per episode"}  # rows shown only when some result has them (multi-turn tasks)
PAPER_TASK = "Dialogue-v0"


# ------------------------------------------------------------------------------------------ helpers
def find_key(config: Any, names: Sequence[str]) -> Any:
    """First value under any of ``names``: a dotted name is a path from the root, a bare name is
    searched in nested dicts breadth-first (shallow keys win)."""
    for name in names:
        if "." in name:
            node = config
            for part in name.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None and not isinstance(node, Mapping):
                return node
    bare = [n for n in names if "." not in n]
    queue = deque([config])
    while queue:
        node = queue.popleft()
        if not isinstance(node, Mapping):
            continue
        for name in bare:
            if name in node and node[name] is not None and not isinstance(node[name], Mapping):
                return node[name]
        queue.extend(v for v in node.values() if isinstance(v, Mapping))
    return None


def targets_of(results: Iterable[Result], default: str = "grao") -> list[str]:
    """``default`` plus algorithms the configs name as targets: ``target``/``targets`` at the config's
    top level or in its ``report`` table (names), or ``target = true`` in a cell's own config."""
    names = [default]
    for r in results:
        config = r.get("config") or {}
        for table in (config, config.get("report") or {}):
            for key in ("target", "targets"):
                value = table.get(key) if isinstance(table, Mapping) else None
                if value is True:
                    names.append(r["algorithm"])
                elif isinstance(value, str):
                    names.append(value)
                elif isinstance(value, list):
                    names += [v for v in value if isinstance(v, str)]
    return ordered(names)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_ci(stats: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 3, seeds: int = 0) -> str:
    """"m ± h" (h: 95% half-width); just "m" with one seed; "—" when missing."""
    if not stats or not _is_num(stats.get("mean")):
        return DASH
    text = f"{stats['mean'] * scale:.{digits}f}"
    if _is_num(stats.get("ci95")):
        text += f" ± {stats['ci95'] * scale:.{digits}f}"
    if seeds and stats.get("n", seeds) < seeds:
        text += f" (n={stats['n']})"
    return text


def fmt_pct(x: Any, digits: int = 1) -> str:
    return f"{100 * x:+.{digits}f}%" if _is_num(x) else DASH


def fmt_num(x: Any, digits: int = 0) -> str:
    return f"{x:,.{digits}f}" if _is_num(x) else DASH


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def metric_groups(metrics: Iterable[str]) -> dict[str, list[str]]:
    """Metrics grouped by prefix ("" first, then "helpful/", ...), main ones first within a group."""
    groups: dict[str, list[str]] = {}
    for m in ordered(metrics):
        groups.setdefault(m.rpartition("/")[0], []).append(m)
    rank = {name: i for i, name in enumerate(COLUMN_ORDER)}
    return {g: sorted(ms, key=lambda m: rank.get(m.rpartition("/")[2], len(rank)))
            for g, ms in sorted(groups.items(), key=lambda kv: kv[0] != "")}


def jsonable(x: Any) -> Any:
    """Strict JSON: nan/inf -> null, numpy -> Python, tuples -> lists."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside ``path`` and rename, so readers never see half a report. A failure is
    an ``OutputError`` naming ``path`` and leaves no temp file behind."""
    with writing(path, "report file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with cleanup(lambda: Path(tmp).unlink(missing_ok=True), f"removing the temp file {tmp}", only_on_error=True):
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
            os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ sections
def setup_rows(results: Sequence[Result]) -> dict[str, dict[str, list[Any]]]:
    """{setting: {algorithm: distinct values}} from the configs (optimizer steps also from the records)."""
    rows: dict[str, dict[str, list[Any]]] = {}
    for name, keys in SETUP_KEYS.items():
        per_algo: dict[str, list[Any]] = {}
        for r in results:
            value = find_key(r.get("config") or {}, keys)
            if value is None and name == "optimizer steps":
                value = r.get("optimizer_steps")
            if value is not None:
                per_algo.setdefault(r["algorithm"], [])
                if value not in per_algo[r["algorithm"]]:
                    per_algo[r["algorithm"]].append(value)
        rows[name] = per_algo
    return rows


def _setup_cell(per_algo: Mapping[str, list[Any]], algorithms: Sequence[str]) -> str:
    if not per_algo:
        return DASH
    distinct = ordered(json.dumps(v, default=str) for vs in per_algo.values() for v in vs)
    missing = [a for a in algorithms if a not in per_algo]
    if len(distinct) == 1:
        text = str(next(iter(per_algo.values()))[0])
        return text + (f" (not set for {', '.join(missing)})" if missing else "")
    lists = {json.dumps(vs, default=str) for vs in per_algo.values()}
    if len(lists) == 1 and not missing:  # the same for every algorithm, only differing between tasks
        return " / ".join(map(str, next(iter(per_algo.values())))) + " (per task, in the order listed above)"
    parts = [f"{a}: {' / '.join(map(str, per_algo[a]))}" for a in algorithms if a in per_algo]
    return "; ".join(parts) + " **(differs)**"


def drop_identical(metrics: Sequence[str], rows: Sequence[Mapping[str, Any]],
                   keep: Iterable[str] = ()) -> tuple[list[str], dict[str, str]]:
    """``metrics`` without those whose per-seed values equal an earlier metric's in every row (e.g. a
    task's extra judge that is the reward itself), except those in ``keep`` (metrics the benchmark names,
    such as a multi-turn task's success rate, which equals its reward when success pays 1); returns (kept,
    {dropped: the metric it repeats})."""
    kept, dropped, seen, keep = [], {}, {}, set(keep)
    for m in metrics:
        column = json.dumps([row.get(m, {}).get("values") for row in rows])
        if column in seen and any(m in row for row in rows) and m not in keep:
            dropped[m] = seen[column]
        else:
            kept.append(m)
            seen.setdefault(column, m)
    return kept, dropped


def _task_section(task: str, algos: Mapping[str, Any], base: Mapping[str, Any] | None,
                  subset_key: str | None = None) -> list[str]:
    # "n" / "helpful/n" count eval prompts; they are not metrics to compare.
    metrics = [m for m in ordered([*(m for s in algos.values() for m in s), *(base or {})])
               if m.rpartition("/")[2] != "n"]
    seeds = {a: max((s["n"] for s in stats.values()), default=0) for a, stats in algos.items()}
    lines = [f"### {task}", ""]
    if not metrics:
        return lines + ["No metrics recorded.", ""]
    if is_multiturn(metrics):
        lines += [MULTITURN_NOTE, ""]
    for group, ms in metric_groups(metrics).items():
        ms, dropped = drop_identical(ms, [*([base] if base else []), *algos.values()], keep=EPISODE_METRICS)
        if group:
            n = next((s[f"{group}/n"]["mean"] for s in [*algos.values(), base or {}] if f"{group}/n" in s), None)
            lines += [f"#### {subset_title(group, subset_key)}" + (f" ({n:.0f} eval prompts)" if _is_num(n) else ""),
                      ""]
        header = ["algorithm", "seeds", *(m.rpartition("/")[2] if group else m for m in ms)]
        rows = []
        if base:
            n = max((s["n"] for s in base.values()), default=0)
            rows.append(["base model", n, *(fmt_ci(base.get(m), seeds=n) for m in ms)])
        rows += [[a, seeds[a], *(fmt_ci(stats.get(m), seeds=seeds[a]) for m in ms)]
                 for a, stats in algos.items()]
        lines += md_table(header, rows)
        if dropped:
            lines += ["Not shown, identical to another column in every row and seed: "
                      + ", ".join(f"{m} (= {same})" for m, same in dropped.items()) + ".", ""]
    return lines


MULTITURN_NOTE = (
    "Multi-turn task: one episode per eval row, on the same rows and seeds for every entry. reward = the mean "
    "episode return (this task's main metric); success_rate = episodes the task ended with a positive return; "
    "turns = assistant turns per episode; invalid_rate = the share of an episode's turns that were invalid "
    "actions (lower is better); tool_calls = tool calls per episode; tool_success = the share of an episode's "
    "tool calls that did not error, over the episodes that called a tool. Each is a mean over episodes.")


def is_multiturn(metrics: Iterable[str]) -> bool:
    """Whether a task's metrics are those of episodes (``algos.multiturn_eval``)."""
    return {"success_rate", "turns"} <= set(metrics)


def _episode_paired_section(task: str, entries: Mapping[str, Any]) -> list[str]:
    """A multi-turn task's metrics as paired differences from the base model (same rows, seeds, env states)."""
    if BASE not in entries:
        return []
    metrics = [m for m in ("reward", *EPISODE_METRICS)
               if any(compare(entries, e, BASE, m) is not None for e in entries if e != BASE)]
    rows = []
    for entry in (e for e in entries if e != BASE):
        cells = []
        for metric in metrics:
            c = compare(entries, entry, BASE, metric)
            cells.append(DASH if c is None else f"{c['diff']:+.3f}{fmt_interval(c)}")
        rows.append([entry, *cells])
    if not metrics or not rows:
        return []
    return [f"#### {task}: episode metrics, paired with the base model", "",
            "Each cell: the entry's mean − the base model's over the same eval episodes and seeds, its 95% "
            "interval and ✓ where the interval excludes 0 (the method of *Paired comparisons*).", "",
            *md_table(["algorithm", *metrics], rows)]


def fmt_interval(c: Mapping[str, Any] | None, digits: int = 3) -> str:
    """"[lo, hi]" of a paired comparison, with ✓ when it excludes 0; "" without one."""
    if not c or not _is_num(c.get("lo")):
        return ""
    return f" [{c['lo']:+.{digits}f}, {c['hi']:+.{digits}f}]" + (" ✓" if c["significant"] else "")


def _relative_section(summary: Mapping[str, Any], targets: Sequence[str], records: Mapping[str, Any],
                      subset_keys: Mapping[str, str | None]) -> tuple[list[str], dict[str, Any]]:
    lines = ["## Relative improvement", "", f"**Formula.** {FORMULA}", "",
             "Each cell: relative improvement (target mean vs baseline mean; Δ = the absolute difference "
             "with its paired 95% interval, ✓ where it excludes 0, see *Paired comparisons*); last column: "
             f"mean of the per-cell ratios (cells used of cells). ⚠ marks a ratio over a baseline with "
             f"|mean| < {NEAR_ZERO}: dividing by a number near 0 inflates the ratio, read Δ instead.", ""]
    out: dict[str, Any] = {}
    metrics = ordered(m for algos in summary.values() for s in algos.values() for m in s
                      if m.rpartition("/")[2] in REL_METRICS)
    for target in targets:
        if not any(target in algos for algos in summary.values()):
            continue
        for metric in metrics:
            table = relative_table(summary, metric, target=target)
            # A metric no baseline has a ratio for (e.g. RAS when nothing can beat the reference) is noise.
            if not any(row["cells_used"] for row in table["baselines"].values()):
                continue
            tasks = [t for t in summary if target in summary[t]
                     and any(metric in s for s in summary[t].values())]
            if not tasks:
                continue
            out.setdefault(target, {})[metric] = table
            lines += [f"### {target} vs others — {metric_title(metric, subset_keys.get(tasks[0]))}", ""]
            rows = []
            for b, row in table["baselines"].items():
                cells, flagged = [], 0
                for t in tasks:
                    c = row["cells"].get(t)
                    if not c:
                        cells.append(DASH)
                        continue
                    c["paired"] = compare(records.get(t, {}), target, b, metric)
                    c["near_zero"] = _is_num(c["baseline"]) and abs(c["baseline"]) < NEAR_ZERO
                    flagged += c["near_zero"] and _is_num(c["rel"])
                    diff = c["target"] - c["baseline"] if _is_num(c["target"]) and _is_num(c["baseline"]) else None
                    delta = f"; Δ {diff:+.3f}{fmt_interval(c['paired'])}" if diff is not None else ""
                    cells.append(f"{fmt_pct(c['rel'])}{' ⚠' if c['near_zero'] else ''} "
                                 f"({fmt_num(c['target'], 3)} vs {fmt_num(c['baseline'], 3)}{delta})")
                row["near_zero_cells"] = flagged
                note = f", {flagged} ⚠" if flagged else ""
                rows.append([b, *cells, f"{fmt_pct(row['mean'])} ({row['cells_used']} of {len(tasks)}{note})"])
            lines += md_table(["baseline", *tasks, "mean of per-cell ratios"], rows)
    if not out:
        lines += [f"No target algorithm ({', '.join(targets)}) found in the results.", ""]
    return lines, out


def _paired_section(paired: Mapping[str, Any], have_records: bool = False) -> list[str]:
    """Every algorithm vs the base model and every pair, per task and metric, with interval, P(A>B), MDE."""
    lines = ["## Paired comparisons", "", f"**Method.** {PAIRED_METHOD}", ""]
    if not paired and have_records:  # e.g. a tiny run whose entries all answer alike
        return lines + ["No metric differs between any two entries on any eval prompt: no paired statistics.", ""]
    if not paired:
        return lines + ["No per-prompt eval records in these results (written before result schema 2): "
                        "no paired statistics.", ""]
    for task, by_metric in paired.items():
        lines += [f"### {task}", ""]
        for metric, comparisons in by_metric.items():
            first = comparisons[0]
            lines += [f"#### {metric} ({first['seeds']} seeds × {first['prompts']} prompts)", ""]
            rows = [[f"{c['a']} − {c['b']}", f"{c['diff']:+.3f}", fmt_interval(c).strip().removesuffix(" ✓"),
                     "✓" if c["significant"] else "", fmt_num(c["p_improve"], 2), fmt_num(c["mde"], 3)]
                    for c in comparisons]
            lines += md_table(["A − B", "mean difference", "95% interval", "excludes 0", "P(A>B)", "MDE"], rows)
        mdes = [c["mde"] for cs in by_metric.values() for c in cs if _is_num(c["mde"])]
        model = [MDE_FACTOR * c["se_model"] for cs in by_metric.values() for c in cs if _is_num(c["se_model"])]
        if mdes:
            lines += [f"Minimum detectable effect of this run on {task}: {min(mdes):.3f} to {max(mdes):.3f} "
                      "(by comparison and metric, in the metric's units). A non-significant difference "
                      "smaller than its MDE means the run could not tell, not that there is no difference."
                      + (f" For planning: the same from the two-way ANOVA standard error (seeds × prompts, no "
                         f"bootstrap inflation): {min(model):.3f} to {max(model):.3f}; the MDE shrinks with "
                         "1/√(seeds × prompts) while per-prompt noise dominates." if model else ""), ""]
    return lines


FINDINGS_TITLE = "## Findings"


def findings_section(paired: Mapping[str, Any]) -> list[str]:
    """The run's claims, written from the paired table alone: every comparison whose 95% interval
    excludes 0 (✓), as "A > B", and nothing else. Prose copied from here (the README's results are)
    cannot claim more than the statistics support or drift from the numbers."""
    lines = [FINDINGS_TITLE, "",
             "Every difference the paired test finds (95% interval excludes 0, ✓); all other pairs are not "
             "separable by this run. Another machine prints other digits, and should find the same ✓ pattern "
             "up to comparisons near the edge of their interval.", ""]
    for task, by_metric in paired.items():
        for metric, comparisons in by_metric.items():
            claims = []
            for c in comparisons:
                if not c["significant"]:
                    continue
                sign = 1 if c["diff"] > 0 else -1  # written as higher − lower
                high, low = (c["a"], c["b"]) if sign > 0 else (c["b"], c["a"])
                lo, hi = sorted((sign * c["lo"], sign * c["hi"]))
                claims.append(f"{high} > {low} ({sign * c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}])")
            n = len(comparisons)
            lines.append(f"- **{task}, {metric}** ({len(claims)} of {n} comparisons): "
                         + ("; ".join(claims) if claims else "none") + ".")
    return lines + [""]


def _efficiency_section(efficiency: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """AUC and steps / generated tokens to the threshold per algorithm, and the paper's step claim beside ours."""
    lines = ["## Sample efficiency", "",
             "AUC = area under the eval-reward curve divided by the steps it spans (the curve's mean height; the "
             "base model's reward is the point at step 0, where every run starts). Threshold = the base model's "
             f"eval reward + {THRESHOLD_FRACTION:.0%} of the best gain over it (best = the highest final mean eval "
             "reward over the task's algorithms); measured from the base because a base that already scores near "
             "the best would otherwise \"reach\" it at step 0. Steps and generated tokens to the threshold: the "
             "first eval step at or above it, mean ± 95% CI over the seeds that reached it; the eval interval "
             "bounds the resolution. *not reached* is a result.", ""]
    if not efficiency:
        return lines + ["No eval curves recorded.", ""], {}
    for task, row in efficiency.items():
        lines += [f"### {task} (threshold {fmt_num(row['threshold'], 3)}; base {fmt_num(row.get('base'), 3)}; "
                  f"best final {fmt_num(row['best_final'], 3)})", ""]
        if not _is_num(row["threshold"]):
            lines += ["No algorithm ends above the base model: there is no gain to reach.", ""]
        table = []
        for algo, e in row["algorithms"].items():
            reached = f"{e['reached']} of {e['seeds']}"
            missing = "not reached" if _is_num(row["threshold"]) else DASH
            steps = fmt_ci(e["steps"], digits=0) if e["reached"] else missing
            tokens = fmt_ci(e["tokens"], digits=0) if e["reached"] else missing
            table.append([algo, fmt_ci(e["auc"]), steps, tokens, reached])
        lines += md_table(["algorithm", "AUC (eval reward)", "steps to threshold", "generated tokens to threshold",
                           "seeds that reached it"], table)
    claim: dict[str, Any] = {"paper": paper.CLAIMED_STEPS, "paper_saving": paper.CLAIMED_STEP_SAVING, "ours": {}}
    rows = []
    for task, row in efficiency.items():
        grao, grpo = (row["algorithms"].get(a) for a in ("grao", "grpo"))
        if not grao or not grpo:
            continue
        counts = f"reached in {grao['reached']} / {grpo['reached']} of {grao['seeds']} / {grpo['seeds']} seeds"
        g, r = grao["steps"]["mean"], grpo["steps"]["mean"]
        saving = 1 - g / r if grao["reached"] and grpo["reached"] and r else math.nan
        if _is_num(saving):
            text = f"{abs(saving):.0%} {'fewer' if saving >= 0 else 'more'} steps ({g:.0f} vs {r:.0f}; {counts})"
        else:
            text = f"no ratio ({counts}{'; grpo at step 0' if grpo['reached'] and not r else ''})"
        claim["ours"][task] = saving
        rows.append([task, f"~{paper.CLAIMED_STEP_SAVING:.0%} fewer steps", text])
    lines += ["### Paper's claim beside ours", "", f"Paper: {paper.CLAIMED_STEPS}. Ours: steps of `grao` vs "
              "`grpo` to the same threshold.", ""]
    lines += md_table(["task", "paper", "ours"], rows) if rows else ["No task has both `grao` and `grpo`.", ""]
    return lines, claim


def md_cell(text: Any, limit: int = 300) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, newlines shown as ⏎, long text cut."""
    text = "" if text is None else str(text)
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ⏎ ") or "(empty)"


def pick_examples(records: Mapping[str, Mapping[Any, Sequence[Mapping[str, Any]]]], seed: Any, k: int) -> list[int]:
    """The ``k`` eval prompts where the entries' rewards differ most (ties: earlier prompt first)."""
    runs = [by_seed[seed] for by_seed in records.values() if seed in by_seed]
    n = min(len(rows) for rows in runs)

    def spread(i: int) -> float:
        values = [rows[i]["reward"] for rows in runs if _is_num(rows[i].get("reward"))]
        return max(values) - min(values) if values else 0.0

    return sorted(range(n), key=lambda i: -spread(i))[:k]


def _examples_section(records: Mapping[str, Any], k: int = 3) -> list[str]:
    """A few eval prompts with the base model's and every algorithm's answer side by side."""
    lines = ["## Eval examples side by side", "",
             f"For each task, the {k} eval prompts of the first seed on which the answers' rewards differ most "
             "(the same prompts and sampling seed for every entry). ras: 1 = beats the reference.", ""]
    if not records:
        return lines + ["No per-prompt eval records in these results.", ""]
    for task, entries in records.items():
        seed = next(iter(next(iter(entries.values()))))
        entries = {e: by_seed for e, by_seed in entries.items() if seed in by_seed}
        order = [BASE, *(e for e in entries if e != BASE)] if BASE in entries else list(entries)
        lines += [f"### {task} (seed {seed})", ""]
        for i in pick_examples(entries, seed, k):
            first = entries[order[0]][seed][i]
            if "turns" in first:  # a multi-turn task's episodes (algos.multiturn_eval)
                lines += _episode_examples(i, first, {e: entries[e][seed][i] for e in order})
                continue
            subset = f" (subset {first['subset']})" if first.get("subset") else ""
            lines += [f"**Eval prompt {i}**{subset}: {md_cell(first.get('prompt'))}", "",
                      f"**Reference:** {md_cell(first.get('reference'))}", ""]
            rows = [[e, md_cell(entries[e][seed][i].get("completion")), fmt_num(entries[e][seed][i].get("reward"), 3),
                     fmt_num(entries[e][seed][i].get("ras"), 0)] for e in order]
            lines += md_table(["entry", "completion", "reward", "ras"], rows)
    return lines


def _episode_examples(i: int, first: Mapping[str, Any], episodes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One eval row's episodes, every entry's conversation after the same first messages."""
    def tools(r: Mapping[str, Any]) -> str:
        calls = r.get("tool_calls")
        return DASH if not _is_num(calls) else f"{calls:.0f} ({fmt_num(r.get('tool_errors'))} errors)"

    rows = [[e, md_cell(r.get("completion"), limit=600), fmt_num(r.get("reward"), 3), fmt_num(r.get("success_rate")),
             fmt_num(r.get("turns")), fmt_num(r.get("invalid_actions")), tools(r)] for e, r in episodes.items()]
    return [f"**Eval episode {i}** (row {first.get('index', i)}): {md_cell(first.get('prompt'))}", "",
            *md_table(["entry", "conversation", "return", "success", "turns", "invalid actions", "tool calls"], rows)]


def _compute_section(table: Mapping[str, Any], totals: Mapping[str, Any]) -> list[str]:
    names = {"optimizer_steps": "optimizer steps", "tokens_generated": "generated tokens",
             "tokens_trained": "trained tokens", "wall_time_s": "wall time (s)"}
    lines = ["## Compute", "", "Per run, mean over seeds.", ""]
    header = ["algorithm", "seeds", *(names[k] for k in COMPUTE_KEYS)]
    for task, algos in table.items():
        lines += [f"### {task}", ""]
        lines += md_table(header, ([a, row["seeds"], *(fmt_num(row[k], 1 if k == "wall_time_s" else 0)
                                                         for k in COMPUTE_KEYS)] for a, row in algos.items()))
    if len(table) > 1:
        lines += ["### All tasks (sum over tasks of the per-run means)", ""]
        lines += md_table(["algorithm", "tasks", *(names[k] for k in COMPUTE_KEYS)],
                          ([a, row["tasks"], *(fmt_num(row[k], 1 if k == "wall_time_s" else 0)
                                               for k in COMPUTE_KEYS)] for a, row in totals.items()))
    return lines


def _paper_section(summary: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The paper's table beside ours (Dialogue-v0 helpful/harmless RAS and NAG, in %)."""
    lines = ["## Paper protocol: the paper's numbers beside ours", "",
             f"Paper: {paper.SOURCE}; judge: {paper.JUDGE}. Cells are RAS / NAG in %. Ours: the "
             f"{PAPER_TASK} task's helpful/harmless subsets, mean over seeds ×100. Different models, data "
             "and judge: compare orderings and gaps, not absolute values.", ""]
    task = next((t for t in summary if t.endswith(PAPER_TASK)), None)
    ours = summary.get(task, {}) if task else {}
    if not task:
        lines += [f"No {PAPER_TASK} results: only the paper's numbers are shown.", ""]
    by_paper_name = {a.upper(): a for a in ours if a.upper() in paper.ALGORITHMS}
    cells = list(paper.TABLE)
    header = ["algorithm", *(paper.cell_name(*c) + " (paper)" for c in cells),
              *(f"{s} (ours)" for s in paper.SUBSETS)]

    def ours_cell(algo: str | None, subset: str) -> str:
        stats = ours.get(algo, {}) if algo else {}
        ras, nag = (fmt_ci(stats.get(f"{subset}/{m}"), scale=100, digits=1) for m in paper.METRICS)
        return DASH if ras == nag == DASH else f"{ras} / {nag}"

    rows = [[name, *(f"{paper.TABLE[c][name][0]:.2f} / {paper.TABLE[c][name][1]:.2f}" for c in cells),
             *(ours_cell(by_paper_name.get(name), s) for s in paper.SUBSETS)] for name in paper.ALGORITHMS]
    rows += [[a, *(DASH for _ in cells), *(ours_cell(a, s) for s in paper.SUBSETS)]
             for a in ours if a not in by_paper_name.values()]
    lines += md_table(header, rows)

    # Headline: same formula on both sides (paper: 4 cells; ours: the 2 subsets of one task).
    ours_cells = {s: {a: {"ras": stats[f"{s}/ras"]} for a, stats in ours.items() if f"{s}/ras" in stats}
                  for s in paper.SUBSETS}
    target = by_paper_name.get("GRAO")
    ours_rel = relative_table(ours_cells, "ras", [a for a in ours if a != target], target) if target else None
    recomputed = paper.headline("ras")
    lines += ["### Headline: relative RAS improvement of GRAO", "",
              "Recomputed = mean over the paper's 4 (model, subset) cells of (GRAO − b)/|b|; ours = the same "
              "over our helpful and harmless cells. The paper's claimed PPO/GRPO numbers do not follow from "
              "its own table by this formula.", ""]
    rows = [[b, f"{paper.CLAIMED_HEADLINE[b]:+.2f}%", f"{recomputed[b]:+.1f}%",
             fmt_pct(ours_rel["baselines"][by_paper_name[b]]["mean"])
             if ours_rel and b in by_paper_name else DASH] for b in paper.CLAIMED_HEADLINE]
    others = (ours_rel or {"baselines": {}})["baselines"]
    rows += [[a, DASH, DASH, fmt_pct(row["mean"])]
             for a, row in others.items() if a not in by_paper_name.values()]
    lines += md_table(["baseline", "paper (claimed)", "paper (recomputed)", "ours"], rows)

    # Ablations on helpful NAG, if the config has GRAO variants named after them.
    abl_rows, grao = [], ours.get(target, {}).get("helpful/nag") if target else None
    for name, claimed in paper.CLAIMED_ABLATIONS.items():
        for a, stats in ours.items():
            if name in a and grao and "helpful/nag" in stats:
                m, g = stats["helpful/nag"]["mean"], grao["mean"]
                rel = (m - g) / abs(g) if _is_num(m) and _is_num(g) and g != 0 else math.nan
                abl_rows.append([a, f"{claimed:+.1f}%", fmt_num(100 * (m - g), 1) if _is_num(m - g) else DASH,
                                 fmt_pct(rel)])
    if abl_rows:
        lines += ["### Ablations (helpful NAG, change vs full GRAO)", "",
                  "The paper does not say whether its ablation drops are relative or in points; both are "
                  "shown.", ""]
        lines += md_table(["variant", "paper", "ours (points)", "ours (relative)"], abl_rows)
    data = {"paper_table": {paper.cell_name(*c): row for c, row in paper.TABLE.items()},
            "paper_claimed_headline": paper.CLAIMED_HEADLINE, "paper_recomputed_headline": recomputed,
            "ours_task": task, "ours_relative_ras": ours_rel}
    return lines, data


def headline_summary(relative: Mapping[str, Any], md_path: Path) -> str:
    """Each target's mean-of-per-cell-ratios improvement over each baseline, one column per metric."""
    lines = []
    for target, by_metric in relative.items():
        metrics = [m for m in REL_METRICS if m in by_metric] or list(by_metric)[:3]
        baselines = ordered(b for m in metrics for b in by_metric[m]["baselines"])
        lines += [f"Relative improvement of {target} (mean over tasks of (m_T − m_B)/|m_B|):", ""]
        lines += md_table(["baseline", *metrics],
                          ([b, *(fmt_pct(by_metric[m]["baselines"].get(b, {}).get("mean")) for m in metrics)]
                           for b in baselines))
    return "\n".join([*lines, f"Full report: {md_path}"])


# ------------------------------------------------------------------------------------------ entry point
def write_report(results: Iterable[Result], out_dir: str | Path, title: str = "Benchmark report",
                 paper_protocol: bool = False, target: str | Sequence[str] | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Write ``out_dir/report.md``, ``out_dir/report.json`` and PNGs under ``out_dir/plots``.

    ``target`` (one name or several) plus "grao" and any algorithm the result configs name as target
    (``targets_of``) are each compared with every other algorithm. Returns the JSON content, with
    "files" (paths written) and "markdown_summary" (the headline relative table, for the console).
    """
    results = unique_results(results)
    out_dir = Path(out_dir)
    summary = summarize(results)
    base = summarize_base(results)
    given = [target] if isinstance(target, str) else list(target or [])
    targets = ordered([*given, *targets_of(results)])
    tasks = list(summary)
    algorithms = ordered(r["algorithm"] for r in results)
    seeds = ordered(r.get("seed") for r in results)

    lines = [f"# {title}", "",
             f"{len(results)} results: {len(tasks)} task(s) × {len(algorithms)} algorithm(s) × "
             f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}).", ""]
    # Controlled setup
    setup = setup_rows(results)
    classes = {a: ordered(str(r.get("algo", a)) for r in results if r["algorithm"] == a) for a in algorithms}
    lines += ["## Controlled setup", "",
              "Every algorithm starts from the same base model and gets the same budget; a value marked "
              "*differs* is not controlled.", ""]
    lines += md_table(["setting", "value"],
                      [["tasks", ", ".join(tasks)], ["seeds", ", ".join(map(str, seeds))],
                       ["algorithms (class)", ", ".join(f"{a} ({'/'.join(c)})" for a, c in classes.items())],
                       *([name, _setup_cell(per_algo, algorithms)] for name, per_algo in setup.items()
                         if per_algo or name not in OPTIONAL_SETUP)])
    # Results per task
    lines += ["## Results", "",
              "Mean ± half-width of the 95% Student-t interval over seeds (n − 1 degrees of freedom); a "
              "single seed shows the value alone. The base model row is the shared starting checkpoint.", ""]
    subset_keys = {t: next((r["subset_key"] for r in results if r["task"] == t and r.get("subset_key")), None)
                   for t in tasks}
    records = prompt_records(results)
    for task in tasks:
        lines += _task_section(task, summary[task], base.get(task), subset_keys[task])
        lines += _episode_paired_section(task, records.get(task, {}))
    paired = paired_table(results, first=targets)
    lines += _paired_section(paired, have_records=bool(records))
    findings = findings_section(paired)
    lines += findings
    rel_lines, relative = _relative_section(summary, targets, records, subset_keys)
    lines += rel_lines
    efficiency = sample_efficiency(results)
    eff_lines, step_claim = _efficiency_section(efficiency)
    lines += eff_lines
    ctable = compute_table(results)
    totals = compute_totals(ctable)
    lines += _compute_section(ctable, totals)
    report: dict[str, Any] = {"schema": 2, "title": title, "formula": FORMULA, "n_results": len(results),
                              "tasks": tasks, "algorithms": algorithms, "seeds": seeds, "targets": targets,
                              "setup": setup, "summary": summary, "base": base, "relative": relative,
                              "compute": ctable, "compute_totals": totals, "paired": paired,
                              "findings": [line for line in findings if line.startswith("- ")],
                              "paired_method": PAIRED_METHOD, "sample_efficiency": efficiency,
                              "paper_step_claim": step_claim}
    if paper_protocol:
        paper_lines, report["paper"] = _paper_section(summary)
        lines += paper_lines
    lines += _examples_section(records)
    plot_files: list[Path] = []
    if plots:
        from benchmarks.plots import make_plots  # matplotlib only when plotting

        plot_files = make_plots(results, out_dir / "plots", first=targets)
        lines += ["## Plots", "", "Learning curves (curves_*), final metrics (final_*), GRAO loss-term "
                  "shares (shares_*); shaded bands and error bars are 95% CIs over seeds. Paired differences "
                  "(paired_*): the bootstrap intervals of *Paired comparisons*, green/red where they exclude 0.", ""]
        for path in plot_files:
            rel = path.relative_to(out_dir).as_posix()
            lines += [f"[{path.name}]({rel})", "", f"![{path.stem}]({rel})", ""]
    report["plots"] = [p.relative_to(out_dir).as_posix() for p in plot_files]
    report["markdown_summary"] = headline_summary(relative, md_path := out_dir / "report.md")
    json_path = out_dir / "report.json"
    write_atomic(md_path, "\n".join(lines).rstrip() + "\n")
    report["files"] = [str(md_path), str(json_path), *map(str, plot_files)]
    report = jsonable(report)
    write_atomic(json_path, json.dumps(report, indent=1, allow_nan=False) + "\n")
    return report
