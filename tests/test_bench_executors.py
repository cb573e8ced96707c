"""The benchmark grid on many workers: local processes and Ray give the sequential run's results, a worker
that dies loses only its cell, and [resources] is checked and applied."""

import concurrent.futures as cf
import json
import os
import sys
import time

import pytest
import torch
from conftest import bench_toml, random_policy

from benchmarks import config as bench_config
from benchmarks import executors, runner
from benchmarks.__main__ import main as cli


def tiny_config(tmp_path, base_path, resources: str = "", top: str = "") -> str:
    """One task, two algorithms, one seed, two steps: every executor test runs this grid."""
    path = tmp_path / "grid.toml"
    path.write_text(top + "\n" + bench_toml(base_path, title="executor test",
                                             body=f"[algorithms.sft]\n[algorithms.grao]\nlr = 1e-3\n{resources}"))
    return str(path)


def comparable(results: list[dict]) -> str:
    """A run's results without wall-clock times and throughputs, which no two runs share."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "time" not in k and not k.endswith("per_s")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return json.dumps(strip(results), sort_keys=True)


def die_in_grao(job: runner.CellJob) -> dict:
    """Stands in for runner.execute_cell: the grao cell's worker process dies without a word."""
    if job.algo.name == "grao":
        os._exit(3)
    return runner.execute_cell(job)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "policy"
    random_policy().save(path)
    return path


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, base_path):
    """The reference: the grid run one cell after the other in this process."""
    tmp = tmp_path_factory.mktemp("sequential")
    cfg = bench_config.load(tiny_config(tmp, base_path))
    return runner.run(cfg, tmp / "out", progress=False, log=quiet)


@pytest.mark.parametrize(("text", "message"), [
    ("[resources]\ncpus_per_cell = 0", r"\[resources\] cpus_per_cell must be >= 1, got 0"),
    ("[resources]\ncpus_per_cell = 1.5", r"\[resources\] cpus_per_cell must be an integer, got float"),
    ("[resources]\ngpus_per_cell = -1", r"\[resources\] gpus_per_cell must be >= 0, got -1"),
    ("[resources]\ncpu_per_cell = 2", r"unknown key 'cpu_per_cell' in \[resources\]; valid keys: cpus_per_cell"),
])
def test_bad_resources_name_the_file_and_key(tmp_path, base_path, text, message):
    path = tiny_config(tmp_path, base_path, resources=text)
    with pytest.raises(bench_config.BenchConfigError, match=message) as err:
        bench_config.load(path)
    assert "grid.toml" in str(err.value)


def test_resources_must_be_a_table(tmp_path, base_path):
    with pytest.raises(bench_config.BenchConfigError, match=r"grid.toml: \[resources\] must be a table, got int"):
        bench_config.load(tiny_config(tmp_path, base_path, top="resources = 2"))


def test_resources_parse_with_defaults(tmp_path, base_path):
    assert bench_config.load(tiny_config(tmp_path, base_path)).resources == bench_config.Resources(1, 0.0)
    cfg = bench_config.load(tiny_config(tmp_path, base_path, "[resources]\ncpus_per_cell = 2\ngpus_per_cell = 0.5"))
    assert cfg.resources == bench_config.Resources(cpus_per_cell=2, gpus_per_cell=0.5)


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--address", "auto"], "--address needs --executor ray"),
    (["--executor", "ray", "--jobs", "2"], "--jobs is for the local executor"),
])
def test_cli_refuses_bad_executor_options(tmp_path, base_path, capsys, args, message):
    assert cli(["run", tiny_config(tmp_path, base_path), "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_cell_runs_with_the_configured_torch_threads(tmp_path, base_path, monkeypatch):
    """Thread count changes CPU float reductions, so it is set per cell, whatever the executor."""
    cfg = bench_config.load(tiny_config(tmp_path, base_path, "[resources]\ncpus_per_cell = 2"))
    seen = []

    def record_threads(config, task, algo, seed, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return {"metrics": {}, "wall_time_s": 0.0}

    monkeypatch.setattr(runner, "run_cell", record_threads)
    torch.set_num_threads(1)
    runner.run(cfg, tmp_path / "out", progress=False, log=quiet)
    assert seen == [2, 2]
    assert torch.get_num_threads() == 1  # this process gets its own setting back


def test_a_failing_cell_in_process_is_reported_after_the_others(tmp_path, base_path, monkeypatch):
    cfg = bench_config.load(tiny_config(tmp_path, base_path))

    def fail_grao(config, task, algo, seed, *args, **kwargs):
        if algo.name == "sft":
            raise ValueError("loss is nan")
        return {"algorithm": algo.name, "metrics": {}, "wall_time_s": 0.0}

    monkeypatch.setattr(runner, "run_cell", fail_grao)
    lines = []
    with pytest.raises(runner.CellsFailed, match=r"1 cell\(s\) failed .*\n  textenv/Arithmetic-v0 sft seed=0: "
                       r"ValueError: loss is nan") as failed:
        runner.run(cfg, tmp_path / "out", progress=False, log=lines.append)
    assert [r["algorithm"] for r in failed.value.results] == ["grao"]  # the cell after the failure still ran
    assert any("sft seed=0: FAILED" in line and "Traceback" in line for line in lines)


def test_a_quiet_run_says_it_is_still_going(monkeypatch):
    monkeypatch.setattr(executors, "HEARTBEAT_S", 0.05)
    with cf.ThreadPoolExecutor(1) as pool:
        future = pool.submit(time.sleep, 0.3)
        idle = []
        assert list(executors._as_completed({future: "job"}, lambda: idle.append(1))) == [("job", None)]
    assert len(idle) >= 2


def test_two_local_workers_give_the_sequential_results(tmp_path, base_path, sequential):
    # Bitwise, and so only within one process environment: both runs are made here, in this test, on this
    # machine with this thread count and these library versions; never compared with recorded numbers.
    cfg = bench_config.load(tiny_config(tmp_path, base_path))
    lines = []
    pool = executors.LocalProcesses(2)
    try:
        results = runner.run(cfg, tmp_path / "out", progress=False, log=lines.append, executor=pool)
    finally:
        pool.close()
    assert [(r["algorithm"], r["seed"]) for r in results] == [("sft", 0), ("grao", 0)]
    assert comparable(results) == comparable(sequential)
    progress = [line for line in lines if line.startswith("[")]
    assert progress[0] == "[0/2 done, 2 running, 0 left] running 2 cell(s) on local processes, 2 at a time"
    assert [line.split("]")[0] for line in progress[1:]] == ["[1/2 done, 1 running, 0 left",
                                                             "[2/2 done, 0 running, 0 left"]


def test_a_worker_that_dies_loses_only_its_cell(tmp_path, base_path, sequential, monkeypatch, capsys):
    path = tiny_config(tmp_path, base_path)
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "execute_cell", die_in_grao)
    assert cli(["run", path, "--out", str(out), "--jobs", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1 cell(s) failed" in err and "textenv/Arithmetic-v0 grao seed=0: WorkerDied" in err
    cells = out / "results" / "textenv__Arithmetic-v0"
    assert [p.relative_to(cells).as_posix() for p in sorted(cells.rglob("*.json"))] == ["sft/seed0.json"]
    assert not (out / "report.md").exists()
    sft_file = (cells / "sft" / "seed0.json").read_text()

    monkeypatch.undo()  # the rerun, in this process (no worker to start), redoes only the lost cell
    assert cli(["run", path, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "sft seed=0: done earlier, skipped" in printed and "grao seed=0: reward" in printed
    assert (cells / "sft" / "seed0.json").read_text() == sft_file
    assert comparable(runner.load_results(out)) == comparable(sorted(sequential, key=lambda r: r["algorithm"]))
    assert (out / "report.md").exists()


def test_ray_tasks_give_the_sequential_results_and_a_crash_loses_only_its_cell(tmp_path, base_path, sequential,
                                                                             monkeypatch):
    ray = pytest.importorskip("ray")  # a `test` extra dependency: present in CI
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = bench_config.load(tiny_config(tmp_path, base_path))
        tasks = executors.make("ray", cpus_per_cell=1)
        assert tasks.slots == 2
        results = runner.run(cfg, tmp_path / "out", progress=False, log=quiet, executor=tasks)
        assert comparable(results) == comparable(sequential)

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
        monkeypatch.setattr(runner, "execute_cell", die_in_grao)
        with pytest.raises(runner.CellsFailed, match="grao seed=0") as failed:
            runner.run(cfg, tmp_path / "crash", progress=False, log=quiet, executor=tasks)
        assert [r["algorithm"] for r in failed.value.results] == ["sft"]
        assert isinstance(failed.value.failures[0][1], ray.exceptions.WorkerCrashedError)
        assert [p.parent.name for p in (tmp_path / "crash").glob("results/*/*/seed0.json")] == ["sft"]
        with pytest.raises(RuntimeError, match=r"grid.toml \[resources\]: a cell asks for cpus_per_cell = 4"):
            executors.make("ray", cpus_per_cell=4, where=f"{cfg.path} [resources]")
    finally:
        ray.shutdown()
