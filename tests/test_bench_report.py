"""Tests for benchmarks/report.py and benchmarks/plots.py on small hand-made result lists."""

import json
import math

import pytest

from benchmarks import plots
from benchmarks.report import find_key, md_cell, targets_of, write_report
from benchmarks.stats import FORMULA

PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = {"base_model": "tiny-llama", "budget": {"steps": 4, "prompts_per_step": 8}, "eval": {"prompts": 32}}


def rec(task, algorithm, seed, metrics, history=(), config=None, **extra):
    algo_cfg = {"group_size": 8} if algorithm.startswith("gr") else {}
    return {"schema": 1, "task": task, "algorithm": algorithm, "algo": algorithm.split("_")[0], "seed": seed,
            "metrics": metrics, "base_metrics": {"reward": 0.1, "ras": 0.05}, "history": list(history),
            "tokens_generated": 1000 if algorithm.startswith("gr") else 0, "tokens_trained": 500,
            "optimizer_steps": 4, "wall_time_s": 2.0 + seed,
            "config": config or {**CONFIG, "hyperparameters": algo_cfg},
            **extra}


def hist(level, shares=False):
    out = []
    for step in range(1, 5):
        h = {"step": step, "loss": 1.0 / step, "reward/mean": level * step / 4}
        if step % 2 == 0:
            h["eval/reward"] = level * step / 4
        if shares:
            h |= {"grao/imitation_share": 0.5 - 0.1 * step, "grao/regularizer_share": 0.3,
                  "grao/exploration_share": 0.2 + 0.1 * step}
        out.append(h)
    return out


def results():
    """A: grao ras 0.5/0.7 (mean 0.6), sft 0.4/0.4; grao nag 0.2/0.4, sft has no nag.
    Dialogue-v0: helpful/harmless RAS and NAG for grao and sft."""
    rs = [rec("A", "grao", 0, {"reward": 1.0, "ras": 0.5, "nag": 0.2}, hist(1.0, shares=True)),
          rec("A", "grao", 1, {"reward": 2.0, "ras": 0.7, "nag": 0.4}, hist(1.2, shares=True)),
          rec("A", "sft", 0, {"reward": 0.5, "ras": 0.4}, hist(0.5)),
          rec("A", "sft", 1, {"reward": 0.5, "ras": 0.4}, hist(0.6))]
    for seed in (0, 1):
        rs.append(rec("textenv/Dialogue-v0", "grao", seed, {"helpful/ras": 0.6, "helpful/nag": 0.3,
                                                            "harmless/ras": 0.5, "harmless/nag": 0.1}))
        rs.append(rec("textenv/Dialogue-v0", "sft", seed, {"helpful/ras": 0.4, "helpful/nag": -0.1,
                                                           "harmless/ras": 0.25, "harmless/nag": 0.0}))
    return rs


def test_find_key_breadth_first_and_targets():
    cfg = {"a": {"steps": 1, "b": {"steps": 2}}, "model": "m"}
    assert find_key(cfg, ["steps"]) == 1 and find_key(cfg, ["base_model", "model"]) == "m"
    assert find_key(cfg, ["nope"]) is None
    rs = [rec("A", "grao", 0, {}), rec("A", "grao_b", 0, {}, config={"target": True}),
          rec("A", "sft", 0, {}, config={"report": {"targets": ["x"]}})]
    assert targets_of(rs) == ["grao", "grao_b", "x"]


def test_write_report_tables_formula_and_json(tmp_path):
    report = write_report(results(), tmp_path, title="T", paper_protocol=True, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# T\n")
    assert FORMULA in md
    # setup: one shared value; G not set for SFT
    assert "| base model | tiny-llama |" in md and "| optimizer steps | 4 |" in md
    assert "| prompts per step | 8 |" in md and "| eval prompts | 32 |" in md
    assert "| group size G | 8 (not set for sft) |" in md
    # per-task rows: ras [0.5, 0.7] -> 0.600 ± 12.706*0.1414/1.414 = 1.271; sft has no nag -> "—"
    assert "| base model | 2 | 0.100 ± 0.000 | 0.050 ± 0.000 | — |" in md
    assert "| grao | 2 | 1.500 ± 6.353 | 0.600 ± 1.271 | 0.300 ± 1.271 |" in md  # reward sd 0.707 -> 6.353
    assert "| sft | 2 | 0.500 ± 0.000 | 0.400 ± 0.000 | — |" in md
    # relative: (0.6 - 0.4)/0.4 = +50%; Dialogue helpful/ras (0.6-0.4)/0.4 = +50%; nag vs missing -> "—"
    # without per-prompt records the difference has no paired interval
    assert "| sft | +50.0% (0.600 vs 0.400; Δ +0.200) | +50.0% (1 of 1) |" in md
    assert "vs others — nag\n" not in md  # no baseline has NAG: a table of dashes is left out
    # harmless/nag baseline 0 -> no ratio, so no table either
    assert "vs others — nag, subset `harmless`" not in md
    assert "### grao vs others — ras, subset `helpful`" in md
    # compute: mean over seeds, wall (2+3)/2 = 2.5
    assert "| grao | 2 | 4 | 1,000 | 500 | 2.5 |" in md
    assert "| sft | 2 | 4 | 0 | 500 | 2.5 |" in md
    # paper beside ours: paper cell, ours x100, recomputed headline; ours helpful (0.6-0.4)/0.4 = 50%,
    # harmless (0.5-0.25)/0.25 = 100% -> mean 75%
    assert "| GRAO | 64.60 / 67.98 |" in md
    assert "60.0 ± 0.0 / 30.0 ± 0.0" in md
    assert "| SFT | +57.70% | +57.7% | +75.0% |" in md
    assert "| PPO | +7.95% | +6.8% | — |" in md
    data = json.loads((tmp_path / "report.json").read_text())  # strict JSON: no NaN
    assert data == report
    assert data["relative"]["grao"]["ras"]["baselines"]["sft"]["mean"] == pytest.approx(0.5)
    assert "nag" not in data["relative"]["grao"] and "harmless/nag" not in data["relative"]["grao"]
    assert data["summary"]["A"]["grao"]["ras"]["values"] == [0.5, 0.7]
    assert data["paper"]["paper_recomputed_headline"]["DPO"] == pytest.approx(17.67, abs=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]  # no temp files left
    # console summary: grao vs sft, mean over tasks; reward (1.5-0.5)/0.5 = +200%, ras +50%, nag undefined
    assert "| sft | +200.0% | +50.0% |\n" in report["markdown_summary"]


def test_write_report_extra_target(tmp_path):
    report = write_report(results(), tmp_path, target="sft", plots=False)
    assert report["targets"] == ["sft", "grao"]
    assert report["relative"]["sft"]["ras"]["baselines"]["grao"]["cells"]["A"]["rel"] == pytest.approx(-1 / 3)
    assert "### sft vs others — ras" in (tmp_path / "report.md").read_text()


def test_report_survives_sparse_and_uncontrolled_results(tmp_path):
    rs = [{"task": "A", "algorithm": "ppo", "seed": 0, "metrics": {"reward": 0.3}},
          {"task": "A", "algorithm": "dpo", "seed": 0, "metrics": {}, "config": {"steps": 10}},
          {"task": "A", "algorithm": "ppo", "seed": 1, "metrics": {"reward": float("nan")},
           "config": {"steps": 20}}]
    write_report(rs, tmp_path, plots=False, paper_protocol=True)
    md = (tmp_path / "report.md").read_text()
    assert "| ppo | 1 | 0.300 |" in md  # one finite seed: no interval
    assert "| dpo | 0 | — |" in md
    assert "ppo: 20; dpo: 10 **(differs)**" in md
    assert "No target algorithm (grao) found" in md
    assert "No Dialogue-v0 results" in md


def test_plots_write_readable_pngs(tmp_path):
    report = write_report(results(), tmp_path, plots=True)
    names = sorted(p.rpartition("/")[2] for p in report["plots"])
    # Dialogue-v0 records have no history: no curves, but final bars
    assert names == ["curves_A.png", "final_A.png", "final_textenv_Dialogue-v0.png", "shares_A.png"]
    for rel in report["plots"]:
        data = (tmp_path / rel).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000
    md = (tmp_path / "report.md").read_text()
    assert "![curves_A](plots/curves_A.png)" in md and "](plots/shares_A.png)" in md


def test_make_plots_without_shares_or_history(tmp_path):
    rs = [rec("A", "sft", 0, {"ras": 0.3}, hist(0.5)), rec("A", "dpo", 0, {"ras": math.nan})]
    files = plots.make_plots(rs, tmp_path)
    assert [f.name for f in files] == ["curves_A.png", "final_A.png"]
    assert all(f.read_bytes()[:8] == PNG for f in files)


def test_setup_cell_tells_per_task_values_from_uncontrolled_ones():
    from benchmarks.report import _setup_cell

    same = {"sft": [200, 48], "grao": [200, 48]}
    assert _setup_cell(same, ["sft", "grao"]) == "200 / 48 (per task, in the order listed above)"
    differs = {"sft": [200, 48], "grao": [100, 48]}
    assert _setup_cell(differs, ["sft", "grao"]).endswith("**(differs)**")
    assert _setup_cell({"sft": [8], "grao": [8]}, ["sft", "grao"]) == "8"


# ------------------------------------------------------------------------------------------ evidence
def evidence_results():
    """Arithmetic-like results with per-prompt records (subsets "+"/"-"), eval curves and a judge column
    that repeats RAS: grao gains 0.4 over the base model, sft nothing."""
    from test_bench_stats import curve_rec, prompt_results

    rs = prompt_results({"grao": 0.4, "sft": 0.0}, n=40, task="textenv/Arithmetic-v0", subsets=["+", "-"] * 20)
    for r in rs:
        r["subset_key"] = "op"
        r["metrics"]["quality_ras"] = r["metrics"]["ras"]
        r["base_metrics"]["quality_ras"] = r["base_metrics"]["ras"]
        r["metrics"]["quality"] = r["metrics"]["reward"] + (0.01 if r["algorithm"] == "sft" else 0.0)
        r["base_metrics"]["quality"] = r["base_metrics"]["reward"]
        final = 0.9 if r["algorithm"] == "grao" else 0.3
        r["history"] = curve_rec(r["algorithm"], r["seed"], {10: final / 2, 20: final, 30: final})["history"]
    rs[0]["examples"][0]["completion"] = "1|2\n3"
    return rs


def test_report_has_paired_mde_efficiency_and_side_by_side_sections(tmp_path):
    report = write_report(evidence_results(), tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    paired = md[md.index("## Paired comparisons"):md.index("## Relative improvement")]
    assert "#### reward (3 seeds × 40 prompts)" in paired
    assert "| A − B | mean difference | 95% interval | excludes 0 | P(A>B) | MDE |" in paired
    grao_row = next(line for line in paired.splitlines() if line.startswith("| grao − base model |"))
    cells = [c.strip() for c in grao_row.split("|")[1:-1]]
    assert float(cells[1]) == pytest.approx(0.4, abs=0.15) and cells[3] == "✓" and cells[4] == "1.00"
    assert float(cells[5]) > 0  # the MDE
    assert "| grao − sft |" in paired and "| sft − base model |" in paired
    assert "Minimum detectable effect of this run on textenv/Arithmetic-v0:" in paired
    comparison = report["paired"]["textenv/Arithmetic-v0"]["reward"][0]
    assert comparison["a"] == "grao" and comparison["significant"] and comparison["mde"] == pytest.approx(
        2.8016 * comparison["se"], rel=1e-4)
    # the relative table shows Δ and its interval beside the ratio
    rel = md[md.index("## Relative improvement"):md.index("## Sample efficiency")]
    assert "; Δ +0." in rel and "] ✓)" in rel
    # sample efficiency: threshold b + 0.9 * (0.9 - b) over the mean base reward b; grao reaches it at step 20,
    # sft (final 0.3, below the base) never
    eff = md[md.index("## Sample efficiency"):md.index("## Compute")]
    b = sum(r["base_metrics"]["reward"] for r in evidence_results() if r["algorithm"] == "grao") / 3
    assert f"### textenv/Arithmetic-v0 (threshold {b + 0.9 * (0.9 - b):.3f}; base {b:.3f}; best final 0.900)" in eff
    assert "| sft | " in eff and "| not reached | not reached | 0 of 3 |" in eff
    assert "| 20 ± 0 | 200 ± 0 | 3 of 3 |" in eff
    # AUC of grao: points (0, b), (10, .45), (20, .9), (30, .9); the base reward b differs per seed
    assert report["sample_efficiency"]["textenv/Arithmetic-v0"]["algorithms"]["grao"]["reached"] == 3
    assert "Paper: GRAO reaches its optimum in ~50% fewer steps than GRPO" in eff
    assert "No task has both `grao` and `grpo`." in eff
    side = md[md.index("## Eval examples side by side"):]
    assert "### textenv/Arithmetic-v0 (seed 0)" in side and side.count("**Eval prompt ") == 3
    assert "| entry | completion | reward | ras |" in side and "| base model |" in side
    assert md_cell("1|2\n3") == "1\\|2 ⏎ 3" and md_cell("x" * 400).endswith("x…") and md_cell("") == "(empty)"


def test_identical_metric_columns_are_dropped_and_subsets_titled(tmp_path):
    write_report(evidence_results(), tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    results_part = md[md.index("## Results"):md.index("## Paired comparisons")]
    # quality_ras equals ras in every row and seed; quality differs for sft, so it stays
    headers = [line for line in results_part.splitlines() if line.startswith("| algorithm |")]
    assert headers[0] == "| algorithm | seeds | reward | ras | quality |"
    assert not any("quality_ras" in h for h in headers)
    assert "quality_ras (= ras)" in results_part
    assert "#### Subset `op = +` (20 eval prompts)" in results_part
    assert "#### Subset `op = -` (20 eval prompts)" in results_part
    assert "*+*" not in md and "*-*" not in md
    assert "### grao vs others — reward, subset `op = +`" in md


def test_drop_identical_keeps_columns_that_differ_anywhere():
    from benchmarks.report import drop_identical
    from benchmarks.stats import metric_title, subset_title

    rows = [{"a": {"values": [1.0]}, "b": {"values": [1.0]}, "c": {"values": [1.0]}},
            {"a": {"values": [2.0]}, "b": {"values": [2.0]}, "c": {"values": [3.0]}}]
    assert drop_identical(["a", "b", "c"], rows) == (["a", "c"], {"b": "a"})
    assert drop_identical(["a", "missing", "gone"], rows) == (["a", "missing", "gone"], {})  # absent: kept
    assert subset_title("helpful", "subset") == "Subset `helpful`" and subset_title("+", "op") == "Subset `op = +`"
    assert metric_title("+/ras", "op") == "ras, subset `op = +`" and metric_title("reward", "op") == "reward"


def test_ratio_over_a_baseline_near_zero_is_flagged(tmp_path):
    rs = [rec("A", "grao", s, {"reward": 0.3}) for s in (0, 1)] + [rec("A", "sft", s, {"reward": 0.02}) for s in (0, 1)]
    report = write_report(rs, tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "| sft | +1400.0% ⚠ (0.300 vs 0.020; Δ +0.280) | +1400.0% (1 of 1, 1 ⚠) |" in md
    assert "|mean| < 0.05" in md
    cell = report["relative"]["grao"]["reward"]["baselines"]["sft"]["cells"]["A"]
    assert cell["near_zero"] is True and cell["paired"] is None
    assert "No per-prompt eval records in these results" in md


def test_paired_plot_from_per_prompt_records(tmp_path):
    report = write_report(evidence_results(), tmp_path, plots=True)
    names = sorted(p.rpartition("/")[2] for p in report["plots"])
    assert "paired_textenv_Arithmetic-v0.png" in names
    assert (tmp_path / "plots" / "paired_textenv_Arithmetic-v0.png").read_bytes()[:8] == PNG


def test_findings_claim_exactly_the_significant_comparisons(tmp_path):
    report = write_report(evidence_results(), tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    findings = md[md.index("## Findings"):md.index("## Relative improvement")]
    for metric, comparisons in report["paired"]["textenv/Arithmetic-v0"].items():
        line = next(x for x in findings.splitlines() if x.startswith(f"- **textenv/Arithmetic-v0, {metric}**"))
        significant = [c for c in comparisons if c["significant"]]
        assert f"({len(significant)} of {len(comparisons)} comparisons)" in line
        assert line.count(" > ") == len(significant)
        for c in significant:  # written higher − lower, with the interval flipped when B is the higher
            high, low, d = (c["a"], c["b"], c["diff"]) if c["diff"] > 0 else (c["b"], c["a"], -c["diff"])
            assert f"{high} > {low} ({d:+.3f} [" in line
        for c in comparisons:
            if not c["significant"]:
                assert f"{c['a']} > {c['b']} (" not in line and f"{c['b']} > {c['a']} (" not in line
    grao = report["paired"]["textenv/Arithmetic-v0"]["reward"][0]
    assert grao["significant"] and "grao > base model (+" in findings
    assert report["findings"] == [x for x in findings.splitlines() if x.startswith("- ")]
