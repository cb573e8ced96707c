"""Sentiment-v0: continue the opening of a short review; the reward is the VADER compound of the continuation.

The classic "positive continuation" task of RLHF tutorials, in miniature and offline. Prompts are
template-generated openings ("Review: The pasta at this place was"); references are *moderately*
positive continuations (VADER ~0.4-0.6), so a strongly positive one beats them and RAS > 0 is
reachable. The corpus mixes strongly positive, mildly positive, neutral and negative continuations,
so a tiny model pretrained on it writes reviews of every mood and its groups of samples differ.
"""

from __future__ import annotations

import numpy as np

import rewards.lexicon  # noqa: F401  (registers "vader")
from textenv.task import Example, Task, TaskError

# Domain -> (things reviewed, openings with a {x} slot). Every opening ends where a verdict begins.
DOMAINS: dict[str, tuple[list[str], list[str]]] = {
    "food": (["pasta", "pizza", "soup", "burger", "salad", "coffee", "steak", "dessert", "sushi", "curry",
              "tacos", "bread", "cake", "noodles", "pie"],
             ["Review: The {x} at this place was", "Review: I thought the {x} here was",
              "Review: Honestly, the {x} was", "Review: Our {x} tonight was", "Review: The {x} we ordered was",
              "Review: For the price, the {x} was", "Review: My friend said the {x} was"]),
    "movie": (["plot", "acting", "ending", "soundtrack", "pacing", "dialogue", "cast", "story", "humor",
               "visuals", "villain", "script"],
              ["Review: The {x} of this movie was", "Review: I thought the {x} in this film was",
               "Review: Honestly, the {x} was", "Review: The {x} of the sequel was",
               "Review: For a blockbuster, the {x} was", "Review: My friend said the {x} was",
               "Review: The {x} of the new show was"]),
    "hotel": (["room", "bed", "staff", "breakfast", "pool", "view", "shower", "lobby", "location", "service",
               "wifi", "gym"],
              ["Review: The {x} in this hotel was", "Review: I thought the {x} here was",
               "Review: Honestly, the {x} was", "Review: The {x} at the resort was",
               "Review: For the price, the {x} was", "Review: My friend said the {x} was",
               "Review: The {x} during our stay was"]),
    "product": (["battery", "screen", "camera", "speaker", "keyboard", "charger", "design", "price", "case",
                 "app", "manual", "sound"],
                ["Review: The {x} of this phone was", "Review: The {x} on my new laptop was",
                 "Review: Honestly, the {x} was", "Review: The {x} of these headphones was",
                 "Review: For the price, the {x} was", "Review: My friend said the {x} was",
                 "Review: The {x} of the tablet was"]),
}

# Continuations by mood (VADER compound in brackets, measured with vaderSentiment 3.3).
STRONG = [" absolutely amazing, I loved it!",        # 0.86
          " fantastic, the best I have ever had.",   # 0.83
          " wonderful and perfect in every way.",    # 0.81
          " superb and truly delightful.",           # 0.90
          " great, I really enjoyed it."]            # 0.83
MILD = [" nice enough.",                              # 0.42
        " good overall.",                             # 0.44
        " solid and pleasant.",                       # 0.60
        " decent and enjoyable.",                     # 0.44
        " better than expected.",                     # 0.44
        " really nice.",                              # 0.48
        " pleasant."]                                 # 0.51
NEUTRAL = [" okay, nothing special.", " average.", " just what I expected.", " a bit bland."]  # about 0
NEGATIVE = [" not great.",                            # -0.51
            " disappointing.",                        # -0.49
            " boring and forgettable.",               # -0.32
            " awful, I hated it.",                    # -0.80
            " terrible and a waste of money.",        # -0.71
            " horrible, the worst I have had.",       # -0.82
            " a total disaster, never again."]        # -0.66
MOODS = (STRONG, MILD, NEUTRAL, NEGATIVE)


def sentiment_task(seed: int = 0, n_eval: int = 96, *, repeats: int = 3,
                   mood_probs: tuple[float, float, float, float] = (0.2, 0.3, 0.2, 0.3)) -> Task:
    """Build Sentiment-v0; splits, pairs and corpus are a pure function of the arguments.

    Each train prompt appears ``repeats`` times in the corpus, each time with a continuation of a
    mood drawn with ``mood_probs`` (strong positive, mild positive, neutral, negative). Eval prompts
    never occur in the corpus.
    """
    prompts = [(domain, opening.format(x=x)) for domain, (things, openings) in DOMAINS.items()
               for x in things for opening in openings]
    if not 1 <= n_eval < len(prompts):
        raise TaskError(f"Sentiment-v0: n_eval must be in [1, {len(prompts) - 1}], got {n_eval}")
    if len(mood_probs) != 4 or min(mood_probs) < 0 or not np.isclose(sum(mood_probs), 1.0):
        raise TaskError(f"Sentiment-v0: mood_probs must be 4 probabilities summing to 1, got {mood_probs}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prompts))

    def example(k: int) -> Example:
        domain, prompt = prompts[k]
        good = MILD[int(rng.integers(len(MILD)))]
        return Example(prompt=prompt, reference=good, chosen=good,
                       rejected=NEGATIVE[int(rng.integers(len(NEGATIVE)))], meta={"domain": domain})

    evals = [example(int(k)) for k in order[:n_eval]]
    train = [example(int(k)) for k in order[n_eval:]]
    corpus = []
    for ex in train:
        for mood in rng.choice(len(MOODS), size=repeats, p=list(mood_probs)):
            options = MOODS[int(mood)]
            corpus.append(ex.prompt + options[int(rng.integers(len(options)))])
    corpus = [corpus[int(i)] for i in rng.permutation(len(corpus))]
    return Task(name="Sentiment-v0", splits={"train": train, "eval": evals}, reward="vader", corpus=corpus,
                subset_key="domain",
                description="Continue a review opening; reward = VADER compound of the continuation in [-1, 1]. "
                            "References are moderately positive, so a glowing continuation beats them.")
