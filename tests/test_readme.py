"""Every Python block of the README runs as written (in a temporary directory).

A block fenced as ```` ```python no-run ```` (it needs the real model's wheel and takes a while) is shown but
not run: the pattern below takes only blocks whose fence line is exactly ```` ```python ````."""

import re
from pathlib import Path

import pytest

import rewards
import textenv

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    finally:
        rewards.unregister("shout")
        textenv.unregister("my/Polite-v0")
        textenv.unregister("my/Vault-v0")


def findings_block(text: str, start: str, end: str) -> list[str]:
    begin = text.index(start) + len(start)
    return [line for line in text[begin:text.index(end, begin)].splitlines() if line.strip()]


@pytest.mark.parametrize("run", ["quick", "real", "multiturn"])
def test_the_readme_results_claim_what_the_report_finds(run):
    """The README's claims about the quick, the real and the multi-turn benchmark are their reports' Findings
    (written from the paired table alone), copied verbatim: they cannot claim more than ✓ or drift from the
    numbers."""
    from benchmarks.report import FINDINGS_TITLE

    report = (README.parent / "docs" / run / "report.md").read_text()
    in_report = findings_block(report, FINDINGS_TITLE, "\n## ")
    in_readme = findings_block(README.read_text(), f"<!-- {run} findings: start -->", f"<!-- {run} findings: end -->")
    assert in_readme and [x for x in in_report if x.startswith("- ")] == in_readme
