"""ChatSums-v0: "What is 7 + 5? Reply with the number only." as a chat message, for real chat models.

A task on which SmolLM2-135M-Instruct (the embedded ``"smollm2"`` model) is right some of the time, so
groups of its samples hold both right and wrong answers. It seldom replies with the number only: it
writes "7 + 5 = 12", or a sentence, or rambles, and sums of small numbers go wrong often enough. The
reward is therefore the *last* number of the answer, compared exactly with a + b (``rewards.get("numeric",
which="last")``): format is not scored, only the sum it ends on.

Prompts are TRL's conversational format (one user message), references one assistant message holding the
sum; every train example also carries a preference pair (the sum, a plausible mistake) for DPO. Eval
prompts never occur in the train split. No corpus: this task is for pretrained models, not the tiny ones.

Base rate, measured with ``python -m benchmarks.base_quality --model smollm2 --tasks ChatSums-v0 --prompts 48
--group-size 2 --threads 2`` (2 samples of each of the first 48 eval prompts, chat template, temperature 0.7,
at most 16 new tokens, seed 0): SmolLM2-135M-Instruct is right in 42.7% of its answers, and the two samples of
a prompt get different rewards for 48% of the prompts. With operands up to 15 it was right in 20.8%, the edge
of what group-relative methods can learn from; hence ``max_operand=10`` (121 sums: 48 eval, 73 train).
"""

from __future__ import annotations

import numpy as np

import rewards
import rewards.verifiable  # noqa: F401  (registers "numeric")
from textenv.task import Example, Task, TaskError
from textenv.tasks.arithmetic import all_problems, wrong_answer

QUESTION = "What is {a} + {b}? Reply with the number only."


def chat_sums_task(seed: int = 0, n_train: int | None = None, n_eval: int = 48, *, max_operand: int = 10) -> Task:
    """Build ChatSums-v0: a + b with operands 0..``max_operand``, a pure function of the arguments.

    ``n_train`` defaults to every problem not held out for eval.
    """
    problems = all_problems(max_operand, "+")
    n_train = len(problems) - n_eval if n_train is None else n_train
    if n_eval < 1 or n_train < 1 or n_eval + n_train > len(problems):
        raise TaskError(f"ChatSums-v0: n_train={n_train} + n_eval={n_eval} must be positive and at most the "
                        f"{len(problems)} sums with max_operand={max_operand}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(problems))

    def example(k: int) -> Example:
        a, _, b = problems[k]
        answer = [{"role": "assistant", "content": str(a + b)}]
        return Example(prompt=[{"role": "user", "content": QUESTION.format(a=a, b=b)}], reference=answer,
                       chosen=answer, rejected=[{"role": "assistant", "content": str(wrong_answer(a + b, rng))}])

    evals = [example(int(k)) for k in order[:n_eval]]
    train = [example(int(k)) for k in order[n_eval:n_eval + n_train]]
    return Task(name="ChatSums-v0", splits={"train": train, "eval": evals},
                reward=rewards.get("numeric", which="last"),
                description=f"chat question a + b with operands 0..{max_operand}; reward 1 when the answer's last "
                            "number is the sum.")
