"""Raw tracebacks and misleading errors, made clear: each row is one bad input or fault, the error (or exit
code) it must get and a fragment of the message, which names the thing at fault and the fix.

CLI rows run ``python -m algos.train`` / ``python -m benchmarks`` through their ``main(argv)`` in this
process and check the exit code, the message on stderr and that no traceback is printed; a few of them
run again as real subprocesses. Library rows check the error type and message (notes included).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import bench_toml, random_policy
from matplotlib.figure import Figure

import algos
from algos import Policy
from algos.errors import OutputError, cleanup, error_text
from algos.policy import ContextLengthError, ModelPathError, looks_local
from algos.train import main as train_main
from benchmarks import executors, plots, report, runner
from benchmarks.__main__ import main as bench_main
from textenv import Example, Task, TextGenEnv

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["sft", "--env", "textenv/Arithmetic-v0", "--steps", "1", "--quiet", "--set", "batch_size=2"]


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


# ----------------------------------------------------------------------------- set-ups the rows share
def forbid_loading(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load or benchmark run fails the row: these inputs must be refused before loading anything."""
    def must_not_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loaded a model or ran cells before checking the arguments")

    monkeypatch.setattr("algos.train.load_policy", must_not_load)
    monkeypatch.setattr("benchmarks.__main__.run", must_not_load)


def a_file(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_loading(tmp, monkeypatch)
    (tmp / "afile").write_text("a file where a folder must go")


def read_only(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder nobody may write in. Root ignores permission bits, so there the probe write fails as it would."""
    forbid_loading(tmp, monkeypatch)
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_write = Path.write_text

        def refuse(self: Path, *args: Any, **kwargs: Any) -> int:
            if folder == self.parent or folder in self.parents:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_write(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", refuse)


def saved_agent(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tmp/agent``: what ``Agent.save`` writes (``OUT/final`` of a run), which is neither a model nor a checkpoint."""
    algos.make("sft", random_policy(), batch_size=2).save(tmp / "agent")


def empty_folder(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp / "empty").mkdir()


def close_fails_after(first: Exception) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """The run fails with ``first``, then its cleanup (process group, executor) fails too."""
    def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise first

        def close_fails() -> None:
            raise RuntimeError("the cleanup broke as well")

        monkeypatch.setattr("algos.train.load_policy", fail)
        monkeypatch.setattr("algos.engine.close", close_fails)
        monkeypatch.setattr("benchmarks.__main__.run", fail)
        executor = executors.InProcess()
        monkeypatch.setattr(executor, "close", close_fails)
        monkeypatch.setattr("benchmarks.executors.make", lambda *args, **kwargs: executor)

    return setup


def missing_base_model(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp / "cfg.toml").write_text(bench_toml(tmp / "no-such-model", body="[algorithms.sft]\n"))


def disk_full_on_plots(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"\x89PNG half")  # a partly written file, then the disk is full
        raise disk_full()

    monkeypatch.setattr(Figure, "savefig", savefig)


# ----------------------------------------------------------------------------- the CLI table
# (which CLI, argv with {tmp} and {run} (a finished benchmark run) filled in, set-up, exit code, stderr fragments)
CLI_ROWS = [
    pytest.param("train", [*TRAIN, "--out", "{tmp}/afile"], a_file, 2,
                 [r"--out .*/afile: it is a file, not a folder; give a folder you can write to"],
                 id="train-out-is-a-file"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/afile/run"], a_file, 2,
                 [r"--out .*/afile/run: .*/afile is a file, so no folder can be made under it"],
                 id="train-out-under-a-file"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/read-only/run"], read_only, 2,
                 [r"--out .*/read-only/run: cannot write files there \(Permission denied\); give a folder you can "
                  r"write to"], id="train-out-read-only"),
    pytest.param("train", [*TRAIN[:3], "--steps", "0", "--out", "{tmp}/out"], forbid_loading, 2,
                 [r"error: --steps must be >= 1, got 0"], id="train-steps-0-before-loading"),
    pytest.param("train", [*TRAIN, "--eval-prompts", "0", "--out", "{tmp}/out"], forbid_loading, 2,
                 [r"--eval-prompts must be >= 1, got 0"], id="train-eval-prompts-0"),
    pytest.param("train", [*TRAIN, "--set", "lr=-1", "--out", "{tmp}/out"], forbid_loading, 2,
                 [r"SFTConfig.lr must be > 0, got -1"], id="train-bad-set-value-before-loading"),
    pytest.param("train", [*TRAIN, "--set", "l_r=1", "--out", "{tmp}/out"], forbid_loading, 2,
                 [r"unknown SFTConfig key 'l_r' in --set; valid keys: .*lr"], id="train-unknown-set-key"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/out", "--resume", "{tmp}/no-such-step"], forbid_loading, 2,
                 [r"--resume .*/no-such-step: no such checkpoint folder; give one of OUT/checkpoints/step-N"],
                 id="train-resume-missing"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/out", "--resume", "{tmp}/agent"],
                 lambda tmp, mp: (saved_agent(tmp, mp), forbid_loading(tmp, mp)), 2,
                 [r"--resume .*/agent: a saved agent, not a checkpoint \(it has no state/"],
                 id="train-resume-final-agent"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/out", "--model", "{tmp}/no-such-model"], None, 2,
                 [r"model path '.*/no-such-model' does not exist \(the nearest existing folder is .*\); check the "
                  r"path"],
                 id="train-model-path-missing"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/out", "--model", "{tmp}/agent"], saved_agent, 2,
                 [r"/agent is a saved agent \(it has agent.json\), not a model: load it with algos.Agent.load\(",
                  r"or give its policy folder .*/agent/policy as the model"], id="train-model-is-an-agent-folder"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/out", "--model", "{tmp}/empty"], empty_folder, 2,
                 [r"/empty is an empty folder, not a model: it needs config.json and weights"],
                 id="train-model-is-an-empty-folder"),
    pytest.param("train", [*TRAIN, "--out", "{tmp}/out"], close_fails_after(ModelPathError("the first error")), 2,
                 [r"error: the first error", r"closing the process group failed too: RuntimeError: the cleanup broke"],
                 id="train-failed-cleanup-keeps-the-first-error"),
    pytest.param("bench", ["run", "quick", "--out", "{tmp}/afile"], a_file, 2,
                 [r"error: --out .*/afile: it is a file, not a folder"], id="bench-out-is-a-file"),
    pytest.param("bench", ["run", "quick", "--out", "{tmp}/afile/run"], a_file, 2,
                 [r"afile is a file, so no folder can be made under it"], id="bench-out-under-a-file"),
    pytest.param("bench", ["run", "quick", "--out", "{tmp}/read-only/run"], read_only, 2,
                 [r"--out .*/read-only/run: cannot write files there \(Permission denied\)"], id="bench-out-read-only"),
    pytest.param("bench", ["run", "{tmp}/cfg.toml", "--out", "{tmp}/out", "--no-progress"], missing_base_model, 2,
                 [r"error: model path '.*/no-such-model' does not exist"], id="bench-base-model-path-missing"),
    pytest.param("bench", ["run", "quick", "--out", "{tmp}/out"], close_fails_after(ModelPathError("the first error")),
                 2, [r"error: the first error", r"closing the local executor failed too: RuntimeError: the cleanup"],
                 id="bench-failed-cleanup-keeps-the-first-error"),
    pytest.param("bench", ["report", "{run}"], disk_full_on_plots, 1,
                 [r"error: the report was not finished: could not write the plot .*/plots/[^ /]+\.png: No space left",
                  r"the results are intact \(2 cell\(s\) in .*/results\)",
                  r"rebuild the report with: python -m benchmarks report .*"], id="bench-report-disk-full-on-plots"),
    pytest.param("bench", ["run", "{run}/cfg.toml", "--out", "{run}", "--no-progress"], disk_full_on_plots, 1,
                 [r"could not write the plot .*\.png: No space left on device", r"the results are intact"],
                 id="bench-run-disk-full-on-plots"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-cell benchmark run (tiny random base, two SFT steps), its config saved as ``cfg.toml``."""
    out = tmp_path_factory.mktemp("finished") / "run"
    base = out.parent / "base"
    random_policy().save(base)
    out.mkdir()
    (out / "cfg.toml").write_text(bench_toml(base, seeds="[0, 1]", max_new_tokens=3, every=0,
                                             body="[algorithms.sft]\n"))
    assert bench_main(["run", str(out / "cfg.toml"), "--out", str(out), "--no-progress"]) == 0
    return out


def run_cli(which: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of one CLI call in this process (argparse errors exit through SystemExit)."""
    try:
        code = train_main(argv) if which == "train" else bench_main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code or 0, capsys.readouterr().err


@pytest.mark.parametrize(("which", "argv", "setup", "code", "fragments"), CLI_ROWS)
def test_cli_refuses_with_a_clear_message(tmp_path, monkeypatch, capsys, request, which, argv, setup, code, fragments):
    monkeypatch.chdir(tmp_path)
    run_dir = request.getfixturevalue("finished_run") if any("{run}" in a for a in argv) else None
    results_before = {p: p.read_bytes() for p in run_dir.glob("results/**/*.json")} if run_dir else {}
    if setup is not None:
        setup(tmp_path, monkeypatch)
    try:
        got, err = run_cli(which, [a.format(tmp=tmp_path, run=run_dir) for a in argv], capsys)
    finally:
        if (tmp_path / "read-only").exists():
            (tmp_path / "read-only").chmod(0o755)  # so that pytest can remove it
    assert got == code, err
    for fragment in fragments:
        assert re.search(fragment, err), f"{fragment!r} not in:\n{err}"
    assert "Traceback" not in err
    if run_dir:  # the report failed, the results did not: same files, same bytes, and no temp file left
        assert {p: p.read_bytes() for p in run_dir.glob("results/**/*.json")} == results_before
        assert not [p for p in run_dir.rglob(".*") if p.is_file()]


@pytest.mark.parametrize(("module", "argv", "fragment"), [
    ("algos.train", [*TRAIN[:3], "--steps", "0", "--out", "out"], "--steps must be >= 1, got 0"),
    ("algos.train", [*TRAIN, "--out", "afile"], "--out afile: it is a file, not a folder"),
    ("benchmarks", ["run", "quick", "--out", "afile"], "--out afile: it is a file, not a folder"),
])
def test_the_real_command_lines_exit_2_without_a_traceback(tmp_path, module, argv, fragment):
    """The same refusals end to end: a separate process, its exit code and all of its stderr."""
    (tmp_path / "afile").write_text("x")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was made


# ----------------------------------------------------------------------------- the library table
def long_reference_env() -> TextGenEnv:
    """A task whose train example 2 has a reference longer than the 128-position context of the test models."""
    examples = [Example("1+1=", "2"), Example("2+2=", "4"), Example("long=", "9" * 200)]
    return TextGenEnv(Task("Long", {"train": examples, "eval": examples},
                           reward=lambda prompts, completions, references=None: [0.0] * len(completions)))


def train_on_long_reference(algorithm: str, truncate_prompts: bool = False) -> None:
    policy = random_policy()
    policy.truncate_prompts = truncate_prompts
    extra = {"group_size": 2, "max_new_tokens": 2} if algorithm == "grao" else {}
    algos.make(algorithm, policy, batch_size=3, **extra).learn(long_reference_env(), 1, progress=False)


def lora_agent_whose_base_moved(tmp: Path) -> None:
    random_policy().save(tmp / "base")
    algos.make("sft", Policy.from_pretrained(tmp / "base", lora={"r": 2}), batch_size=2).save(tmp / "agent")
    shutil.move(tmp / "base", tmp / "moved")
    algos.Agent.load(tmp / "agent")


def learn_fails_then_closing_the_logs_fails(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.tensorboard import SummaryWriter

    def update(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the step itself failed")

    real_close = SummaryWriter.close

    def close(self: SummaryWriter) -> None:
        real_close(self)  # its writer thread really ends; only the report of it fails
        raise disk_full()

    agent = algos.make("sft", random_policy(), batch_size=2)
    monkeypatch.setattr(agent, "update", update)
    monkeypatch.setattr(SummaryWriter, "close", close)
    agent.learn(long_reference_env(), 1, log_dir=tmp / "logs", progress=False)


def cleanup_fails_after(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with cleanup(lambda: 1 / 0, "removing the scratch folder"):
        raise KeyError("the first error")


def report_file_write_hits_a_full_disk(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: str, dst: Any) -> None:
        raise disk_full()

    monkeypatch.setattr(report.os, "replace", replace)
    try:
        report.write_atomic(tmp / "report.md", "# report\n")
    finally:
        assert list(tmp.iterdir()) == []  # no temp file left behind


def plot_hits_a_full_disk(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk_full_on_plots(tmp, monkeypatch)
    try:
        plots.save(plots.new_figure(2, 2), tmp / "plots" / "curves_x.png")
    finally:
        assert list((tmp / "plots").iterdir()) == []


def result_write_fails_and_so_does_removing_the_temp_file(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def dump(data: Any, fh: Any, **kwargs: Any) -> None:
        raise disk_full()

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(runner.json, "dump", dump)
    monkeypatch.setattr(Path, "unlink", unlink)
    runner.write_json_atomic(tmp / "seed0.json", {"metrics": 1})


LIBRARY_ROWS = [
    pytest.param(lambda tmp, mp: Policy.from_pretrained(tmp / "nowhere" / "model"), ModelPathError,
                 r"model path '.*/nowhere/model' does not exist \(the nearest existing folder is .*\)",
                 id="abs-missing"),
    pytest.param(lambda tmp, mp: (mp.chdir(tmp), Policy.from_pretrained("./model")), ModelPathError,
                 r"model path './model' does not exist", id="dot-slash-missing"),
    pytest.param(lambda tmp, mp: (mp.chdir(tmp), Policy.from_pretrained("../no-such-model-dir")), ModelPathError,
                 r"model path '../no-such-model-dir' does not exist", id="dot-dot-missing"),
    pytest.param(lambda tmp, mp: (mp.setenv("HOME", str(tmp)), Policy.from_pretrained("~/models/m")), ModelPathError,
                 r"model path '~/models/m' does not exist \(the nearest existing folder is .*\)", id="home-missing"),
    pytest.param(lambda tmp, mp: (mp.chdir(tmp), Policy.from_pretrained("runs/a/final")), ModelPathError,
                 r"model path 'runs/a/final' does not exist", id="three-parts-is-a-path"),
    pytest.param(lambda tmp, mp: (mp.chdir(tmp), (tmp / "runs").mkdir(), Policy.from_pretrained("runs/typo")),
                 ModelPathError, r"model path 'runs/typo' does not exist", id="owner-folder-exists"),
    pytest.param(lambda tmp, mp: ((tmp / "m.safetensors").write_bytes(b"x"),
                                  Policy.from_pretrained(tmp / "m.safetensors")),
                 ModelPathError, r"m.safetensors is a file; give the folder that holds the model", id="file-given"),
    pytest.param(lambda tmp, mp: (saved_agent(tmp, mp), Policy.from_pretrained(tmp / "agent")), ModelPathError,
                 r"agent is a saved agent \(it has agent.json\), not a model: load it with algos.Agent.load",
                 id="agent-folder"),
    pytest.param(lambda tmp, mp: ((tmp / "checkpoints").mkdir(), Policy.from_pretrained(tmp / "checkpoints")),
                 ModelPathError, r"checkpoints is an empty folder, not a model", id="empty-folder"),
    pytest.param(lambda tmp, mp: ((tmp / "notes.txt").write_text("x"), Policy.from_pretrained(tmp)), ModelPathError,
                 r"has no config.json, so it is not a saved model \(it holds notes.txt\)", id="not-a-model-folder"),
    pytest.param(lambda tmp, mp: lora_agent_whose_base_moved(tmp), ModelPathError,
                 r"agent/policy is a LoRA adapter whose base model .*/base does not exist \(base_model_name_or_path in "
                 r".*adapter_config.json\): move the base model back there, or set base_model_name_or_path",
                 id="lora-agent-base-moved"),
    pytest.param(lambda tmp, mp: train_on_long_reference("sft"), ContextLengthError,
                 r"^Long: train example 2 has a reference answer of 201 tokens \(EOS included\), which with its prompt "
                 r"cannot fit the model's context of 128 positions. truncate_prompts cannot fix this \(it only cuts "
                 r"prompts\): shorten that reference or leave the example out", id="sft-reference-past-context"),
    pytest.param(lambda tmp, mp: train_on_long_reference("sft", truncate_prompts=True), ContextLengthError,
                 r"train example 2 has a reference answer of 201 tokens", id="sft-reference-past-context-truncating"),
    pytest.param(lambda tmp, mp: train_on_long_reference("grao"), ContextLengthError,
                 r"Long: train example 2 has a reference answer of 201 tokens", id="grao-reference-past-context"),
    pytest.param(lambda tmp, mp: random_policy().encode(["1+1="], ["9" * 200]), ContextLengthError,
                 r"completion 0 has 201 tokens .* truncate_prompts cannot help .*: shorten or leave out that "
                 r"completion, cut completions with max_tokens", id="encode-completion-past-context"),
    pytest.param(lambda tmp, mp: random_policy().encode(["7" * 100], ["9" * 50]), ContextLengthError,
                 r"prompt 0 has 101 tokens and the longest completion of the batch has 51, 152 in all, .*; shorten it "
                 r"or that completion, or set truncate_prompts", id="encode-pair-past-context"),
    pytest.param(lambda tmp, mp: random_policy().generate(["x"], max_new_tokens=200), ContextLengthError,
                 r"prompt 0 cannot fit: the answer may take 200 tokens, which leaves no room for a prompt .* "
                 r"\(truncate_prompts cannot help\); lower max_new_tokens$", id="max-new-tokens-past-context"),
    pytest.param(learn_fails_then_closing_the_logs_fails, RuntimeError,
                 r"the step itself failed\n\(afterwards, closing the TensorBoard log failed too: OSError: .*No space",
                 id="failed-log-close-keeps-the-training-error"),
    pytest.param(cleanup_fails_after, KeyError,
                 r"the first error'\n\(afterwards, removing the scratch folder failed too: ZeroDivisionError",
                 id="cleanup-failure-is-a-note"),
    pytest.param(report_file_write_hits_a_full_disk, OutputError,
                 r"could not write the report file .*/report.md: No space left on device", id="report-md-disk-full"),
    pytest.param(plot_hits_a_full_disk, OutputError,
                 r"could not write the plot .*/plots/curves_x.png: No space left on device", id="plot-disk-full"),
    pytest.param(result_write_fails_and_so_does_removing_the_temp_file, OutputError,
                 r"could not write the result file .*/seed0.json: No space left on device\n\(afterwards, removing "
                 r"the temp file .*\.tmp failed too: PermissionError", id="result-disk-full-and-unlink-fails"),
]


@pytest.mark.parametrize(("trigger", "error", "message"), LIBRARY_ROWS)
def test_library_errors_name_the_thing_and_the_fix(tmp_path, monkeypatch, trigger, error, message):
    with pytest.raises(error) as caught:
        trigger(tmp_path, monkeypatch)
    assert re.search(message, error_text(caught.value)), error_text(caught.value)


@pytest.mark.parametrize(("name", "local"), [
    ("gpt2", False), ("HuggingFaceTB/SmolLM2-135M-Instruct", False), ("/abs/model", True), ("./m", True),
    ("../m", True), ("~/m", True), (".", True), ("a/b/c", True), ("C:\\models\\m", True), (Path("m"), True),
])
def test_which_names_are_local_paths(name, local):
    """The documented rule (``looks_local``): hub ids are ``name`` or ``owner/name``; the rest are paths."""
    assert looks_local(name) is local


def test_a_hub_name_is_left_to_transformers(monkeypatch):
    """A hub id is not second-guessed: transformers' own (offline) error still comes through."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as caught:
        Policy.from_pretrained("no-such-owner-xyz/no-such-model")
    assert not isinstance(caught.value, ModelPathError)
