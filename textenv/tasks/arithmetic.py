"""Arithmetic-v0: short sums and differences ("12+7=" -> "19") with a verifiable numeric reward.

The smallest task on which a byte-level model of a few hundred thousand parameters, pretrained for a
minute on CPU, is right *some* of the time: groups of sampled answers then hold both right and wrong
ones, which is what group-relative methods (GRPO, GRAO) need to learn anything. The corpus is
deliberately noisy (wrong answers, garbled lines) so the base model is imperfect, yet it states each
training fact correctly most of the time, so the right answers stay inside the model's distribution.
Eval prompts never occur in the corpus: eval reward measures generalisation, not recall.
"""

from __future__ import annotations

import numpy as np

import rewards
import rewards.verifiable  # noqa: F401  (registers "numeric")
from textenv.task import Example, Task, TaskError


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def all_problems(max_operand: int, ops: str) -> list[tuple[int, str, int]]:
    """Every problem of the task; subtraction keeps a >= b so answers are never negative."""
    return [(a, op, b) for op in ops for a in range(max_operand + 1) for b in range(max_operand + 1)
            if op != "-" or a >= b]


def wrong_answer(answer: int, rng: np.random.Generator) -> int:
    """A plausible mistake: off by one or two, a dropped carry (off by ten), or reversed digits."""
    kind = rng.integers(4)
    if kind == 3 and answer >= 10 and str(answer) != str(answer)[::-1]:
        return int(str(answer)[::-1])
    delta = [1, 2, 10][min(kind, 2)] * (1 if rng.random() < 0.5 or answer < 10 else -1)
    return answer + int(delta)


def _garble(line: str, rng: np.random.Generator) -> str:
    """Drop, double or swap one character: text that looks like arithmetic but is not."""
    i = int(rng.integers(len(line) - 1))
    kind = rng.integers(3)
    if kind == 0:
        return line[:i] + line[i + 1:]
    if kind == 1:
        return line[:i] + line[i] + line[i:]
    return line[:i] + line[i + 1] + line[i] + line[i + 2:]


def arithmetic_task(seed: int = 0, n_train: int | None = None, n_eval: int = 200, *,
                    max_operand: int = 29, ops: str = "+-", repeats: int = 3, noise: float = 0.2,
                    garble: float = 0.05, partial_scale: float = 2.0) -> Task:
    """Build Arithmetic-v0; everything (splits, pairs, corpus) is a pure function of the arguments.

    ``n_train`` defaults to every problem not held out for eval. Each train problem appears
    ``repeats`` times in the corpus, each time wrong with probability ``noise``; a ``garble``
    fraction of extra lines are corrupted copies. The reward is ``rewards.get("numeric")``: 1 for the
    exact answer (the first number in the completion), ``exp(-|error| / partial_scale)`` for another
    number, 0 for none.
    """
    if not ops or set(ops) - {"+", "-"}:
        raise TaskError(f"Arithmetic-v0: ops must be a non-empty subset of '+-', got {ops!r}")
    rng = np.random.default_rng(seed)
    problems = all_problems(max_operand, ops)
    order = rng.permutation(len(problems))
    n_train = len(problems) - n_eval if n_train is None else n_train
    if n_eval < 1 or n_train < 1 or n_eval + n_train > len(problems):
        raise TaskError(f"Arithmetic-v0: n_train={n_train} + n_eval={n_eval} must be positive and at "
                        f"most the {len(problems)} problems with max_operand={max_operand}, ops={ops!r}")

    def example(k: int) -> Example:
        a, op, b = problems[k]
        answer = _answer(a, op, b)
        return Example(prompt=f"{a}{op}{b}=", reference=str(answer), chosen=str(answer),
                       rejected=str(wrong_answer(answer, rng)), meta={"op": op})

    evals = [example(int(k)) for k in order[:n_eval]]
    train = [example(int(k)) for k in order[n_eval:n_eval + n_train]]
    corpus = []
    for ex in train:
        for _ in range(repeats):
            answer = ex.reference if rng.random() >= noise else str(wrong_answer(int(ex.reference), rng))
            corpus.append(ex.prompt + answer)
    # A garbled train line must not turn into an eval prompt (e.g. "12+35=1" from "12+3=15").
    held_out = {ex.prompt for ex in evals}
    for i in rng.integers(len(corpus), size=int(garble * len(corpus))):
        line = _garble(corpus[int(i)], rng)
        if line[:line.find("=") + 1] not in held_out:
            corpus.append(line)
    corpus = [corpus[int(i)] for i in rng.permutation(len(corpus))]
    reward = rewards.get("numeric", partial_scale=partial_scale)
    return Task(name="Arithmetic-v0", splits={"train": train, "eval": evals}, reward=reward, corpus=corpus,
                subset_key="op",
                description=f"a{ops}b with operands 0..{max_operand}; reward 1 for the exact answer, "
                            "partial credit falling with |error|.")
