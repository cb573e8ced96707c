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
