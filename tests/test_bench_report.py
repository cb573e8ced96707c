"""Tests for benchmarks/report.py and benchmarks/plots.py on small hand-made result lists."""

import json
import math

import pytest

from benchmarks import plots
from benchmarks.report import find_key, targets_of, write_report
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
    assert "| sft | +50.0% (0.600 vs 0.400) | +50.0% (1 of 1) |" in md
    assert "vs others — nag" not in md  # no baseline has NAG: a table of dashes is left out
    # harmless/nag baseline 0 -> no ratio, so no table either
    assert "vs others — harmless/nag" not in md
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
