"""benchmarks.vs_trl's phase timer: what its table's columns mean (no model, no TRL needed)."""

import time

import pytest
import torch

from benchmarks.vs_trl import PhaseTimer


class Toy:
    def forward(self, x):
        time.sleep(0.01)
        return x

    def generate(self, x):  # calls forward inside, as a model's generate does
        return [self.forward(x) for _ in range(3)]


def test_nested_calls_count_for_the_outer_phase_and_forward_splits_by_grad_mode():
    timer = PhaseTimer()
    timer.wrap(Toy, "forward", "forward")
    timer.wrap(Toy, "generate", "generate")
    toy = Toy()
    toy.generate(1)
    with torch.no_grad():
        toy.forward(1)
    toy.forward(1)
    toy.forward(1)
    assert set(timer.seconds) == {"generate", "forward (no grad)", "forward (grad)"}
    assert timer.seconds["generate"] >= 0.03  # its three forwards are in it, not in a forward column
    assert timer.seconds["forward (no grad)"] >= 0.01 and timer.seconds["forward (grad)"] >= 0.02
    assert timer.active is None
    assert all(peak > 0 for peak in timer.peak_mb.values())  # VmHWM read while each phase ran
    timer.reset()
    assert not timer.seconds and not timer.peak_mb and timer.overall_mb > 0


def test_a_phase_that_raises_still_counts_and_leaves_no_phase_open():
    class Failing:
        def step(self):
            raise RuntimeError("boom")

    timer = PhaseTimer()
    timer.wrap(Failing, "step", "optimizer")
    with pytest.raises(RuntimeError, match="boom"):
        Failing().step()
    assert "optimizer" in timer.seconds and timer.active is None
