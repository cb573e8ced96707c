"""The benchmark runner: config validation, resumable cells, corrupt files, controlled budgets."""

import json

import pytest
from conftest import bench_toml, random_policy

from benchmarks import config as bench_config
from benchmarks import runner
from benchmarks.__main__ import main as cli
from benchmarks.stats import FORMULA

ALGORITHMS = """
[algorithms.sft]
[algorithms.grao]
lr = {grao_lr}
[algorithms.grao_no_imitation]
algorithm = "grao"
imitation = false
"""


def write_config(tmp_path, base_path, grao_lr: float = 1e-3, seeds: str = "[0, 1]", every: int = 1,
                 algorithms: str = ALGORITHMS, name: str = "tiny.toml") -> str:
    path = tmp_path / name
    path.write_text(bench_toml(base_path, title="runner test", seeds=seeds, every=every,
                               body=algorithms.format(grao_lr=grao_lr)))
    return str(path)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "policy"
    random_policy().save(path)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ('colour = "red"', r"unknown key 'colour' in \[top level\]; valid keys:"),
    ('[budget]\nsteps = "ten"', r"\[budget\] steps must be an integer, got str"),
    ('[budget]\nstepz = 3', r"unknown key 'stepz' in \[budget\]; valid keys: group_size, max_new_tokens"),
    ('[tasks."textenv/Arithmetc-v0"]', r"unknown task 'textenv/Arithmetc-v0'.*did you mean textenv/Arithmetic-v0"),
    ("[tasks]", r"\[tasks\] must name at least one task"),
    ('[tasks."textenv/Arithmetic-v0"]\n[algorithms.grpo]\nlos_type = "dapo"',
     r"unknown GRPOConfig key 'los_type' in .*\[algorithms.grpo\]; valid keys: .*loss_type"),
    ('[tasks."textenv/Arithmetic-v0"]\n[algorithms.grpo]\nloss_type = "ppo"', r"must be one of"),
    ('[tasks."textenv/Arithmetic-v0"]\n[algorithms.gpro]', r"unknown algorithm 'gpro' in \[algorithms.gpro\]"),
    ('[tasks."textenv/Arithmetic-v0"]\n[algorithms.grao]\ngroup_size = 4',
     r"\[algorithms.grao\] sets 'group_size', which the benchmark controls"),
    ('seeds = [1, 1]\n[tasks."textenv/Arithmetic-v0"]\n[algorithms.sft]', r"seeds has duplicates"),
    ('[tasks."textenv/Arithmetic-v0"]\n[algorithms.sft]\ntarget = "x"', r"unknown SFTConfig key 'target'"),
    ("seeds = [", r"not valid TOML"),
])
def test_bad_configs_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(bench_config.BenchConfigError, match=message) as err:
        bench_config.load(path)
    assert "bad.toml" in str(err.value)


def test_missing_config_file_and_unknown_shipped_name():
    with pytest.raises(bench_config.BenchConfigError, match=r"shipped: ablation, hh, multiturn, paper, quick"):
        bench_config.load("quik")
    with pytest.raises(bench_config.BenchConfigError, match="config file not found"):
        bench_config.load("nowhere/x.toml")


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("colour = 1")
    assert cli(["run", str(path)]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quick", "paper", "ablation", "hh", "real"])
def test_shipped_configs_parse(name):
    cfg = bench_config.load(name)
    assert cfg.algorithms and cfg.tasks and cfg.seeds


def test_run_is_controlled_resumable_and_redoes_corrupt_cells(tmp_path, base_path, monkeypatch):
    cfg = bench_config.load(write_config(tmp_path, base_path))
    out = tmp_path / "out"
    real_run_cell, calls = runner.run_cell, []

    def crash_on_fourth(*args, **kwargs):
        calls.append((args[2].name, args[3]))
        if len(calls) == 4:
            raise KeyboardInterrupt  # the run dies in the middle of a cell
        return real_run_cell(*args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, out, progress=False, log=lambda s: None)
    finished = sorted(p.relative_to(out).as_posix() for p in out.glob("results/*/*/*.json"))
    assert len(finished) == 3  # the cells done before the crash survive, the one in flight does not
    assert not list(out.rglob("*.tmp"))

    calls.clear()
    results = runner.run(cfg, out, progress=False, log=lambda s: None)
    assert calls == [("sft", 1), ("grao", 1), ("grao_no_imitation", 1)]
    assert len(results) == 6

    # Same budget, same base, same eval prompts and seed for every algorithm of a (task, seed).
    for r in results:
        assert r["config"]["budget"] == {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4}
        assert r["config"]["base_path"] == str(base_path)
        assert r["optimizer_steps"] == 2 and r["tokens_trained"] > 0
        assert [h["step"] for h in r["history"] if "eval/reward" in h] == [1, 2]
        assert {"reward", "ras", "tie", "nag"} <= set(r["metrics"])
        # per-prompt evidence for paired statistics: the same prompts as the base model's, means match
        assert [e["prompt"] for e in r["examples"]] == [e["prompt"] for e in r["base_examples"]]
        assert len(r["examples"]) == 4 and {"reference", "completion", "reward", "ras", "tie", "nag", "subset"} <= set(
            r["examples"][0])
        assert "nag" not in r["base_examples"][0] and r["subset_key"] == "op"
        assert sum(e["reward"] for e in r["examples"]) / 4 == pytest.approx(r["metrics"]["reward"])
        assert sum(e["reward"] for e in r["base_examples"]) / 4 == pytest.approx(r["base_metrics"]["reward"])
    by_seed = {}
    for r in results:
        by_seed.setdefault(r["seed"], []).append(json.dumps(r["base_metrics"], sort_keys=True))
    assert all(len(set(v)) == 1 for v in by_seed.values())
    hyper = {r["algorithm"]: r["config"]["hyperparameters"] for r in results if r["seed"] == 0}
    assert hyper["grao"]["lr"] == 1e-3 and hyper["grao_no_imitation"]["imitation"] is False
    assert hyper["grao"]["group_size"] == 2 and hyper["sft"]["batch_size"] == 2

    # A corrupt result file is set aside and only that cell is run again.
    victim = out / "results" / "textenv__Arithmetic-v0" / "grao" / "seed1.json"
    victim.write_text('{"schema": 1, "metrics": {"rew')
    calls.clear()
    runner.run(cfg, out, progress=False, log=lambda s: None)
    assert calls == [("grao", 1)]
    assert json.loads(victim.read_text())["algorithm"] == "grao"
    assert len(list(victim.parent.glob("seed1.corrupt-*"))) == 1

    # Changing an algorithm's settings makes its old cells stale; the others are kept.
    cfg2 = bench_config.load(write_config(tmp_path, base_path, grao_lr=2e-3))
    calls.clear()
    runner.run(cfg2, out, progress=False, log=lambda s: None)
    assert sorted(calls) == [("grao", 0), ("grao", 1)]


def test_report_from_a_run_directory(tmp_path, base_path, capsys):
    path = write_config(tmp_path, base_path)
    out = tmp_path / "out"
    assert cli(["run", path, "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "| grao |" in report and "| sft |" in report and FORMULA in report
    assert len(list(out.glob("plots/*.png"))) >= 3
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = EventAccumulator(str(out / "tensorboard" / "textenv__Arithmetic-v0" / "grao" / "seed0"))
    runs.Reload()
    assert "_hparams_/session_start_info" in runs.PluginTagToContent("hparams")
    assert "## Paired comparisons" in report and "## Sample efficiency" in report and "## Findings" in report
    from algos.tiny import weights_sha256  # the report names the base checkpoint every cell started from

    assert f"| base checkpoint (SHA-256 of its weights) | {weights_sha256(base_path)[:16]} |" in report
    (out / "report.md").unlink()
    assert cli(["report", str(out)]) == 0
    assert (out / "report.md").exists()


def test_sft_then_rl_entry(tmp_path, base_path):
    """`sft_steps` trains SFT first, then the budget's RL steps from there; the record says so."""
    path = write_config(tmp_path, base_path, seeds="[0]", every=2, name="sft_rl.toml", algorithms="""
[algorithms.sft_grao]
algorithm = "grao"
sft_steps = 3
""")
    (result,) = runner.run(bench_config.load(path), tmp_path / "out", progress=False, log=lambda s: None)
    assert result["algo"] == "grao" and result["sft_steps"] == 3 and result["optimizer_steps"] == 5
    assert [h["step"] for h in result["history"]] == [1, 2, 3, 4, 5]
    assert [h.get("phase") for h in result["history"]] == ["sft"] * 3 + [None] * 2
    assert "grao/imitation_share" in result["history"][-1] and "eval/reward" in result["history"][-1]


def test_task_kwargs_are_checked_against_the_task(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[tasks."textenv/Arithmetic-v0"]\nkwargs = { max_opernd = 9 }\n[algorithms.sft]')
    message = r"bad.toml: \[tasks.\"textenv/Arithmetic-v0\"\] kwargs: .*'max_opernd'.*takes: .*max_operand"
    with pytest.raises(bench_config.BenchConfigError, match=message):
        bench_config.load(path)


def test_write_hparams_records_settings_and_final_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    algo = bench_config.AlgoSpec("grao_b", "grao", {})
    runner.write_hparams(tmp_path, {"lr": 1e-3, "betas": [0.9, 0.99], "unset": None}, algo,
                         bench_config.Budget(steps=7), {"reward": 0.5, "n": 4.0, "+/ras": 0.25})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    hparams = dict(start.hparams)
    assert hparams["lr"].number_value == 1e-3 and hparams["budget/steps"].number_value == 7
    assert hparams["betas"].string_value == "[0.9, 0.99]" and hparams["entry"].string_value == "grao_b"
    assert "unset" not in hparams
    assert sorted(events.Tags()["scalars"]) == ["hparam/+/ras", "hparam/reward"]  # prompt counts left out


def test_a_local_base_checkpoint_changed_in_place_makes_its_cells_stale(tmp_path):
    base = tmp_path / "base"
    random_policy().save(base)
    cfg = bench_config.load(write_config(tmp_path, base, seeds="[0]"))
    task, algo = cfg.tasks[0], cfg.algorithms[0]
    before = runner.cell_key(cfg, task, algo, 0)
    assert runner.cell_key(cfg, task, algo, 0) == before  # a pure function of config and files
    random_policy(seed=1).save(base)  # retrained at the same path
    assert runner.cell_key(cfg, task, algo, 0) != before
