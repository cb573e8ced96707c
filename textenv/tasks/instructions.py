"""Instructions-v0: write about a topic under checkable constraints (IFEval / Tülu 3 verifiable instructions).

Each prompt asks for one or two sentences about a topic and adds constraints a rule can check: answer in
lowercase, include a given word, do not use another, start with a word, end with a phrase, use no commas,
stay under a number of words (``rewards.instructions``). The reward is the share of the prompt's
constraints the answer meets (``rewards.get("instructions")``); the metric ``all_met`` is 1 only when it
meets every one (IFEval's prompt-level accuracy).

References are demonstrations built by rule from a hand-written sentence per topic, so they meet their
constraints by construction (the factory checks it: every reference scores 1.0); the rejected answer of
each preference pair is the reference with its first constraint broken (capitalised, the word dropped,
the phrase cut, padded past the word limit, ...), so DPO contrasts answers that differ in one rule.
Prompts are TRL's conversational format; eval prompts never occur in the train split. No corpus: this
task is for pretrained chat models.

Base rate, measured with ``python -m benchmarks.base_quality --model smollm2 --tasks Instructions-v0 --prompts
48 --group-size 2 --threads 2`` (2 samples of each of the first 48 eval prompts, chat template, temperature
0.7, at most 48 new tokens, seed 0): SmolLM2-135M-Instruct's answers meet 30.2% of their constraints (the mean
reward) and all of them in 9.4% (``all_met``); the two samples of a prompt get different rewards for 29% of
the prompts. In the groups ``--show`` prints, it stays on topic but capitalises, uses commas and runs long.
"""

from __future__ import annotations

import itertools

import numpy as np

import rewards
from rewards.instructions import describe, has_word
from textenv.task import Example, Task, TaskError, columns_of, message_text

# (topic, a sentence about it with no commas): the seed of every reference.
TOPICS = [
    ("the ocean", "The ocean covers most of our planet and is home to countless fish."),
    ("coffee", "Coffee is made from roasted beans and many people drink it in the morning."),
    ("autumn", "In autumn the leaves turn red and gold before they fall."),
    ("bicycles", "A bicycle is a quiet and healthy way to travel around a town."),
    ("the moon", "The moon circles the earth about once a month and lights up the night."),
    ("libraries", "A library lends books to anyone who wants to read them."),
    ("rain", "Rain falls from clouds when tiny drops of water grow too heavy to float."),
    ("cats", "Cats are curious animals that sleep for most of the day."),
    ("mountains", "Mountains rise high above the land and their peaks are often covered in snow."),
    ("bread", "Bread is baked from flour and water and it smells wonderful when fresh."),
    ("trains", "Trains carry people and goods across long distances on steel rails."),
    ("honey bees", "Honey bees collect nectar from flowers and turn it into honey."),
    ("the sun", "The sun is a star that gives our planet light and warmth."),
    ("gardening", "Gardening means planting seeds and caring for them as they grow."),
    ("music", "Music can lift our mood and bring people together."),
    ("snow", "Snow forms when water freezes high in the clouds and falls as soft flakes."),
    ("dogs", "Dogs are loyal companions that love to play outside."),
    ("chess", "Chess is a board game where two players try to trap the other king."),
    ("forests", "Forests are full of trees that clean the air we breathe."),
    ("the desert", "The desert is dry and hot during the day but cold at night."),
    ("tea", "Tea is brewed from dried leaves and hot water."),
    ("volcanoes", "A volcano is a mountain that can throw out hot lava and ash."),
    ("swimming", "Swimming is a good exercise that uses almost every muscle in the body."),
    ("birds", "Birds have feathers and most of them can fly."),
    ("the internet", "The internet connects computers all over the world."),
    ("rivers", "A river carries fresh water from the hills down to the sea."),
    ("friendship", "Friendship means caring about someone and being there when they need help."),
    ("apples", "Apples grow on trees and can be sweet or sour."),
    ("the night sky", "On a clear night the sky is full of bright stars."),
    ("cooking", "Cooking turns simple ingredients into a warm and tasty meal."),
    ("airplanes", "An airplane flies by pushing air down with its wings."),
    ("maps", "A map shows where places are and helps travellers find their way."),
]
INCLUDE = ["music", "home", "family", "winter", "summer", "sunlight", "friends", "books", "childhood", "peace",
           "adventure", "water"]  # words that read well in "It reminds me of ___."
EXCLUDE = ["very", "really", "always", "many", "beautiful", "important", "just", "also", "great", "good",
           "the", "and"]
START = ["Today", "Honestly", "Sometimes", "Indeed", "Yes", "Surely"]
END = ["Is there anything else I can help with?", "Have a nice day.", "That is all.", "Thank you for asking."]
WORD_LIMITS = [12, 15, 20, 25, 30]
KINDS = ["lowercase", "no_commas", "include", "exclude", "start_with", "end_with", "max_words"]
REQUEST = "Write one or two sentences about {topic}."


def _reference(sentence: str, constraints: dict[str, str]) -> str:
    """A demonstration that meets ``constraints`` (kind -> argument), built from the topic's sentence."""
    text = sentence
    if "include" in constraints:
        text += f" It reminds me of {constraints['include']}."
    if "start_with" in constraints:
        text = f"{constraints['start_with']} {text[0].lower()}{text[1:]}"
    if "end_with" in constraints:
        text += f" {constraints['end_with']}"
    if "no_commas" in constraints:
        text = text.replace(",", "")
    if "lowercase" in constraints:
        text = text.lower()
    return text


def _broken(sentence: str, constraints: dict[str, str], kind: str) -> str:
    """The reference with the constraint ``kind`` broken (and, where it can be, only that one)."""
    reference = _reference(sentence, constraints)
    if kind == "no_commas":
        return reference.replace(" ", ", ", 1)
    if kind == "exclude":
        first, rest = reference.split(" ", 1)  # the word goes in second, so start and end stay as asked
        return f"{first} {constraints[kind]} {rest}"
    if kind != "max_words":  # the demonstration built without that constraint
        return _reference(sentence, {k: v for k, v in constraints.items() if k != kind})
    padded, limit = reference, int(constraints[kind])  # go on past the word limit
    while len(padded.split()) <= limit:
        padded += " " + sentence
    return padded


def instructions_task(seed: int = 0, n_train: int = 512, n_eval: int = 64, *, constraints_per_prompt: int = 2,
                      ) -> Task:
    """Build Instructions-v0, a pure function of the arguments: ``n_train`` + ``n_eval`` distinct prompts,
    each a topic with ``constraints_per_prompt`` constraints of different kinds."""
    if not 1 <= constraints_per_prompt <= len(KINDS):
        raise TaskError(f"Instructions-v0: constraints_per_prompt must be in 1..{len(KINDS)}, "
                        f"got {constraints_per_prompt}")
    rng = np.random.default_rng(seed)
    combos = list(itertools.combinations(KINDS, constraints_per_prompt))
    reward = rewards.get("instructions")
    seen: set[str] = set()
    examples: list[Example] = []
    for _ in range(50 * (n_train + n_eval)):  # distinct prompts are drawn until there are enough
        if len(examples) == n_train + n_eval:
            break
        topic, sentence = TOPICS[int(rng.integers(len(TOPICS)))]
        kinds = [str(k) for k in rng.permutation(combos[int(rng.integers(len(combos)))])]
        chosen = {k: "" for k in kinds}
        absent = [w for w in INCLUDE if not has_word(sentence, w)]  # so that leaving it out breaks the rule
        for kind, pool in (("include", absent), ("start_with", START), ("end_with", END)):
            if kind in chosen:
                chosen[kind] = str(rng.choice(pool))
        reference = _reference(sentence, chosen)
        if "exclude" in chosen:  # a word the reference does not use
            chosen["exclude"] = str(rng.choice([w for w in EXCLUDE if not has_word(reference, w)]))
        if "max_words" in chosen:  # a limit the reference keeps
            chosen["max_words"] = str(rng.choice([n for n in WORD_LIMITS if n >= len(reference.split())]))
        specs = [f"{k}:{chosen[k]}" if chosen[k] else k for k in kinds]
        content = " ".join([REQUEST.format(topic=topic), *map(describe, specs)])
        if content in seen:
            continue
        seen.add(content)
        rejected = _broken(sentence, chosen, kinds[0])
        examples.append(Example(prompt=[{"role": "user", "content": content}],
                                reference=[{"role": "assistant", "content": reference}],
                                chosen=[{"role": "assistant", "content": reference}],
                                rejected=[{"role": "assistant", "content": rejected}],
                                meta={"constraints": specs}))
    if len(examples) < n_train + n_eval:
        raise TaskError(f"Instructions-v0: found only {len(examples)} distinct prompts for n_train={n_train} + "
                        f"n_eval={n_eval} with constraints_per_prompt={constraints_per_prompt}; ask for fewer")
    task = Task(name="Instructions-v0", splits={"train": examples[n_eval:], "eval": examples[:n_eval]},
                reward=reward, metrics={"all_met": rewards.get("instructions", level="prompt")},
                description="one or two sentences about a topic under checkable constraints; reward = share of "
                            "the constraints met.")
    _check_demonstrations(task)
    return task


def _check_demonstrations(task: Task) -> None:
    """Every reference meets all its constraints and every rejected answer misses one: else the rules are wrong."""
    for split, examples in task.splits.items():
        for name, want in (("reference", 1.0), ("rejected", None)):
            texts = [message_text(getattr(ex, name)) for ex in examples]
            scores = task.reward([ex.prompt for ex in examples], texts, where=task.name, **columns_of(examples))
            bad = [i for i, s in enumerate(scores) if (s != want if want is not None else s >= 1.0)]
            if bad:
                raise TaskError(f"Instructions-v0: {split} example {bad[0]}'s {name} {texts[bad[0]]!r} scores "
                                f"{scores[bad[0]]} for {examples[bad[0]].meta['constraints']}")
