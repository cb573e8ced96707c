"""Registry, validation and the rule-based reward families (verifiable, lexicon, metrics, judges, composites).

Expected numbers are computed by hand or by calling the reference library directly, never copied
from the code under test.
"""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest

import rewards
from rewards import RewardError
from rewards.instructions import describe, satisfied
from rewards.verifiable import normalize, parse_number


@pytest.fixture
def temp_reward():
    """Register rewards under throwaway names and remove them afterwards."""
    names = []

    def add(name, fn):
        rewards.register(name)(fn)
        names.append(name)
        return rewards.get(name)

    yield add
    for n in names:
        rewards.unregister(n)


P3 = ["p0", "p1", "p2"]
C3 = ["a", "bb", "ccc"]


# --------------------------------------------------------------------------- registry

def test_all_families_registered():
    expected = {"exact_match", "numeric", "regex", "keywords", "vader", "rouge_l", "bleu", "bradley_terry",
                "sequence_classifier", "pairwise_judge", "weighted_sum", "length_penalty", "scaled", "clipped"}
    assert expected <= set(rewards.list_rewards())


def test_duplicate_registration_refused():
    with pytest.raises(RewardError, match=r"'exact_match' is already registered"):
        rewards.register("exact_match")(lambda p, c, r=None, **k: np.zeros(len(c)))


def test_unknown_name_suggests_closest():
    with pytest.raises(RewardError, match=r"unknown reward 'exact_mach'.*did you mean 'exact_match'"):
        rewards.get("exact_mach")
    with pytest.raises(RewardError, match=r"unknown reward 'rouge'.*'rouge_l'"):
        rewards.get("rouge")


def test_bad_constructor_kwargs_name_the_reward():
    with pytest.raises(RewardError, match=r"reward 'regex': bad arguments \['patern'\]"):
        rewards.get("regex", patern="x")


def test_wrong_length_output(temp_reward):
    r = temp_reward("_t_short", lambda p, c, r=None, **k: [1.0, 2.0])
    with pytest.raises(RewardError, match=r"reward '_t_short' returned 2 values for 3 completions"):
        r(P3, C3)


def test_nan_and_inf_name_the_index(temp_reward):
    r = temp_reward("_t_nan", lambda p, c, r=None, **k: [0.0, float("nan"), 1.0])
    with pytest.raises(RewardError, match=r"reward '_t_nan' returned a non-finite value \(nan\) at index 1"):
        r(P3, C3)
    r = temp_reward("_t_inf", lambda p, c, r=None, **k: [0.0, 1.0, -math.inf])
    with pytest.raises(RewardError, match=r"reward '_t_inf'.*non-finite value \(-inf\) at index 2"):
        r(P3, C3)


def test_non_numeric_and_scalar_output(temp_reward):
    r = temp_reward("_t_str", lambda p, c, r=None, **k: ["good", "bad", "ok"])
    with pytest.raises(RewardError, match=r"reward '_t_str' returned non-numeric values"):
        r(P3, C3)
    r = temp_reward("_t_scalar", lambda p, c, r=None, **k: 1.0)
    with pytest.raises(RewardError, match=r"reward '_t_scalar' returned a scalar"):
        r(P3, C3)


def test_exception_inside_reward_is_wrapped(temp_reward):
    r = temp_reward("_t_boom", lambda p, c, r=None, **k: 1 / 0)
    with pytest.raises(RewardError, match=r"reward '_t_boom' \(in env X-v0\) raised ZeroDivisionError"):
        r(P3, C3, where="env X-v0")


def test_bad_inputs_named(temp_reward):
    r = temp_reward("_t_len", lambda p, c, r=None, **k: [len(x) for x in c])
    with pytest.raises(RewardError, match=r"reward '_t_len': got 2 prompts for 3 completions"):
        r(P3[:2], C3)
    with pytest.raises(RewardError, match=r"reward '_t_len': completion 1 is int, expected str"):
        r(P3, ["a", 5, "c"])
    with pytest.raises(RewardError, match=r"reward '_t_len': got 1 references for 3 completions"):
        r(P3, C3, ["x"])
    with pytest.raises(RewardError, match=r"reward '_t_len': column 'topic' has 2 values for 3 completions"):
        r(P3, C3, topic=["a", "b"])
    np.testing.assert_array_equal(r(P3, C3), [1, 2, 3])
    assert r([], []).shape == (0,)


def test_resolve_and_reference_rewards():
    def length(prompts, completions, references=None, **kw):
        return [float(len(c)) for c in completions]

    r = rewards.resolve(length)
    assert r.name == "length" and not r.pairwise
    np.testing.assert_array_equal(r.reference_rewards(["p", "q"], ["abc", "de"]), [3.0, 2.0])
    assert rewards.resolve(r) is r
    assert rewards.resolve("vader").name == "vader"
    with pytest.raises(RewardError, match="registered name or a callable"):
        rewards.resolve(42)


# --------------------------------------------------------------------------- verifiable

def test_normalize():
    assert normalize("  Hello,   World!! ") == "hello, world"
    assert normalize("«Paris»") == "«paris»"  # only ASCII punctuation is stripped
    assert normalize("A.B.", ignore_case=False) == "A.B"


def test_exact_match():
    r = rewards.get("exact_match")
    comps = ["Paris.", "  paris ", "PARIS!!", "Lyon", "New   York", "u.s.a."]
    refs = ["paris", "Paris", "paris", "paris", "new york", "USA"]
    np.testing.assert_array_equal(r(["q"] * 6, comps, refs), [1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(rewards.get("exact_match", ignore_case=False)(["q"] * 2, ["Paris", "paris"],
                                                                                ["paris", "paris"]), [0, 1])


def test_exact_match_missing_reference():
    r = rewards.get("exact_match")
    with pytest.raises(RewardError, match=r"reward 'exact_match'.*reference 1 is None"):
        r(["a", "b"], ["x", "y"], ["x", None])
    with pytest.raises(RewardError, match=r"reward 'exact_match'.*needs references"):
        r(["a"], ["x"])


def test_parse_number():
    assert parse_number("The answer is 19.") == 19.0
    assert parse_number("1,000 apples and 3") == 1000.0
    assert parse_number("1,000 apples and 3", "last") == 3.0
    assert parse_number("-3.5 degrees") == -3.5
    assert parse_number("about .5") == 0.5
    assert parse_number("1e3") == 1000.0
    assert parse_number("no digits") is None


def test_numeric_exact_and_partial():
    comps = ["19", "The answer is 19.", "18", "abc", "1,000", "-3.5", "x 2 y 19"]
    refs = ["19", "19", "19", "19", "1000", "-3.5", "19"]
    p = ["q"] * len(comps)
    np.testing.assert_array_equal(rewards.get("numeric")(p, comps, refs), [1, 1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(rewards.get("numeric", which="last")(p, comps, refs), [1, 1, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(rewards.get("numeric", atol=1.0)(p[:3], comps[:3], refs[:3]), [1, 1, 1])
    np.testing.assert_array_equal(rewards.get("numeric", rtol=0.1)(["q"] * 2, ["105", "111"], ["100", "100"]),
                                  [1, 0])
    partial = rewards.get("numeric", partial_scale=2.0)(["q"] * 3, ["18", "25", "none"], ["19", "19", "19"])
    np.testing.assert_allclose(partial, [math.exp(-0.5), math.exp(-3.0), 0.0])


def test_numeric_errors():
    with pytest.raises(RewardError, match=r"reward 'numeric'.*reference 1 \('n/a'\) contains no number"):
        rewards.get("numeric")(["q", "q"], ["1", "2"], ["1", "n/a"])
    with pytest.raises(RewardError, match=r"numeric: which must be"):
        rewards.get("numeric", which="middle")
    with pytest.raises(RewardError, match=r"numeric: partial_scale must be > 0"):
        rewards.get("numeric", partial_scale=0)


def test_regex():
    p = ["q"] * 3
    np.testing.assert_array_equal(rewards.get("regex", pattern=r"\d+")(p, ["abc 12", "abc", "7"]), [1, 0, 1])
    full = rewards.get("regex", pattern=r"\d+", full=True, match_value=2.0, miss_value=-1.0)
    np.testing.assert_array_equal(full(p, ["12", "12 apples", ""]), [2, -1, -1])
    fmt = rewards.get("regex", pattern=r"<answer>.+</answer>")
    np.testing.assert_array_equal(fmt(p[:2], ["so <answer>4</answer>", "<answer></answer>"]), [1, 0])
    with pytest.raises(RewardError, match=r"regex: bad pattern '\('"):
        rewards.get("regex", pattern="(")


def test_keywords_fixed_and_per_row():
    fixed = rewards.get("keywords", keywords=["cat", "dog"])
    np.testing.assert_allclose(fixed(["q"] * 4, ["a cat and a Dog", "Cat only", "concatenate", ""]),
                               [1.0, 0.5, 0.0, 0.0])
    per_row = rewards.get("keywords")
    out = per_row(["q"] * 3, ["red car", "green", "anything"], keywords=[["red"], "blue, green", []])
    np.testing.assert_allclose(out, [1.0, 0.5, 1.0])
    multi = rewards.get("keywords", keywords=["new york"], ignore_case=False)
    np.testing.assert_array_equal(multi(["q"] * 2, ["in new york", "in New York"]), [1, 0])


def test_keywords_errors():
    with pytest.raises(RewardError, match=r"reward 'keywords'.*no column 'keywords'"):
        rewards.get("keywords")(["q"], ["x"])
    with pytest.raises(RewardError, match=r"reward 'keywords'.*column 'must' is None at index 1"):
        rewards.get("keywords", column="must")(["q", "q"], ["x", "y"], must=[["x"], None])



@pytest.mark.parametrize(("text", "constraint", "met"), [
    ("all in lowercase, 42.", "lowercase", True), ("Not lowercase", "lowercase", False), ("42", "lowercase", False),
    ("no commas here", "no_commas", True), ("one, two", "no_commas", False),
    ("I like Music a lot", "include:music", True), ("musical notes", "include:music", False),
    ("musical notes", "exclude:music", True), ("music!", "exclude:music", False),
    ("**Honestly**, it is fine.", "start_with:honestly", True), ("Well honestly", "start_with:Honestly", False),
    ("Blue. THAT IS ALL.", "end_with:That is all.", True), ('"Blue. That is all."', "end_with:That is all.", True),
    ("That is all. Bye", "end_with:That is all.", False),
    ("one two three", "max_words:3", True), ("one two three four", "max_words:3", False),
    ("one two three", "min_words:3", True), ("one two", "min_words:3", False),
    ("", "exclude:music", False), ("   ", "max_words:3", False),  # an answer with no word meets nothing
])
def test_instruction_constraints_by_hand(text, constraint, met):
    assert satisfied(text, constraint) is met


def test_instructions_reward_is_the_share_met_or_all_at_the_prompt_level():
    constraints = [["lowercase", "include:sea", "max_words:5"], ["no_commas"], []]
    completions = ["the sea is blue today", "Yes, it is.", "anything"]
    np.testing.assert_allclose(rewards.get("instructions")(["q"] * 3, completions, constraints=constraints),
                               [1.0, 0.0, 1.0])
    completions[0] = "The sea is blue"
    np.testing.assert_allclose(rewards.get("instructions")(["q"] * 3, completions, constraints=constraints),
                               [2 / 3, 0.0, 1.0])
    prompt_level = rewards.get("instructions", level="prompt")(["q"] * 3, completions, constraints=constraints)
    np.testing.assert_allclose(prompt_level, [0.0, 0.0, 1.0])
    assert describe("max_words:12") == "Use at most 12 words."


@pytest.mark.parametrize(("constraint", "message"), [
    ("shout", r"unknown constraint kind 'shout' in 'shout'; kinds: end_with, exclude, include, lowercase"),
    ("include", r"'include' needs argument, got 'include' \(write it as 'include:...'\)"),
    ("lowercase:yes", r"'lowercase' takes no argument, got 'lowercase:yes'"),
    ("max_words:ten", r"max_words needs a whole number of words, got 'max_words:ten'"),
])
def test_bad_instruction_constraints_are_named(constraint, message):
    with pytest.raises(RewardError, match=message):
        rewards.get("instructions")(["q"], ["x"], constraints=[[constraint]])
    with pytest.raises(RewardError, match=r"no column 'constraints'.*put a list of constraint strings"):
        rewards.get("instructions")(["q"], ["x"])
    with pytest.raises(RewardError, match="level must be 'instruction' or 'prompt'"):
        rewards.get("instructions", level="strict")


# --------------------------------------------------------------------------- lexicon

def test_vader_compound_matches_lexicon():
    # VADER's compound is s / sqrt(s^2 + 15) for a single word; lexicon: good 1.9, bad -2.5.
    r = rewards.get("vader")
    out = r(["q"] * 3, ["good", "bad", ""])
    np.testing.assert_allclose(out, [1.9 / math.sqrt(1.9**2 + 15), -2.5 / math.sqrt(2.5**2 + 15), 0.0],
                               atol=1e-4)


def test_vader_orders_sentiment_and_ignores_prompt():
    r = rewards.get("vader")
    out = r(["I hate you"] * 3, ["I love this, it is wonderful!", "It is a table.", "I hate this, it is awful."])
    assert out[0] > 0.5 > out[1] == 0.0 > -0.5 > out[2]
    assert np.all(np.abs(out) <= 1)


# --------------------------------------------------------------------------- metrics

def _no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")


def test_metric_modules_load_offline_and_are_cached(monkeypatch):
    import evaluate

    from rewards.metrics import load_metric, metric_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    load_metric.cache_clear()
    for name in ("rouge_l", "bleu"):
        m = load_metric(name)
        assert isinstance(m, evaluate.Metric)
        assert load_metric(name) is m
        assert metric_path(name).name == name
    # the modules are plain evaluate scripts: evaluate.load(path) works on them directly too
    rouge = evaluate.load(str(metric_path("rouge_l")), keep_in_memory=True)
    out = rouge.compute(predictions=["the cat sat", "zzz"], references=["the cat sat down", "the cat"])
    assert out["rougeL"] == pytest.approx((6 / 7 + 0.0) / 2)
    with pytest.raises(RewardError, match=r"no shipped metric module 'meteor'.*'bleu'"):
        metric_path("meteor")


def test_rouge_l_matches_rouge_score():
    from rouge_score import rouge_scorer

    preds = ["the cat sat", "the quick brown fox", "nothing shared", "a b c d"]
    refs = ["the cat sat down", "a quick fox jumps", "totally different", "d c b a"]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]
    out = rewards.get("rouge_l")(["q"] * 4, preds, refs)
    np.testing.assert_allclose(out, expected)
    assert out[0] == pytest.approx(6 / 7)  # LCS 3: precision 1, recall 3/4
    assert out[3] == pytest.approx(0.25)  # LCS of a b c d / d c b a has length 1
    recall = rewards.get("rouge_l", measure="recall")(["q"], preds[:1], refs[:1])
    assert recall[0] == pytest.approx(0.75)


def test_rouge_l_multiple_references_take_the_best():
    r = rewards.get("rouge_l")
    out = r(["q"] * 3, ["the cat sat", "the dog ran", "x y"],
            [["a dog", "the cat sat"], ["the dog ran"], "x y"])  # mixed list / str references
    np.testing.assert_allclose(out, [1.0, 1.0, 1.0])


def test_bleu_hand_computed_and_matches_nltk():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    r = rewards.get("bleu")
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths so no brevity penalty
    hand = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    preds = [hyp, ref, "dogs bark", "the cat", "the cat sat on the mat today , friends"]
    out = r(["q"] * len(preds), preds, [ref] * len(preds))
    assert out[0] == pytest.approx(hand)
    assert out[1] == pytest.approx(1.0)
    assert out[2] == 0.0
    smooth = SmoothingFunction().method3
    expected = [sentence_bleu([ref.split()], p.split(), smoothing_function=smooth) for p in preds]
    np.testing.assert_allclose(out, expected)
    assert 0 < out[3] < out[0]  # short hypothesis: smoothed, and penalised for brevity


def test_bleu_options():
    r = rewards.get("bleu", max_order=1, lowercase=True)
    # unigram precision 2/3 (clipped), hypothesis longer than the reference: no brevity penalty
    assert r(["q"], ["The The cat"], ["the cat"])[0] == pytest.approx(2 / 3)
    with pytest.raises(RewardError, match=r"bleu: unknown smooth_method 'exp'"):
        rewards.get("bleu", smooth_method="exp")


def test_metric_reward_needs_references():
    with pytest.raises(RewardError, match=r"reward 'bleu'.*reference 1 is None"):
        rewards.get("bleu")(["q", "q"], ["a", "b"], ["a", None])
    with pytest.raises(RewardError, match=r"reward 'rouge_l'.*needs references"):
        rewards.get("rouge_l")(["q"], ["a"])


# --------------------------------------------------------------------------- judges

def longer_wins(prompt, completion, reference):
    return (len(completion) > len(reference)) - (len(completion) < len(reference))


def test_pairwise_judge():
    j = rewards.get("pairwise_judge", judge_fn=longer_wins)
    assert j.pairwise
    np.testing.assert_array_equal(j(["q"] * 3, ["aaa", "a", "aa"], ["aa", "aa", "bb"]), [1, -1, 0])
    np.testing.assert_array_equal(j.reference_rewards(["q", "q"], ["x", "yy"]), [0, 0])


def test_pairwise_judge_batched():
    calls = []

    def batch_judge(prompts, completions, references):
        calls.append(len(completions))
        return np.array([longer_wins(p, c, r) for p, c, r in zip(prompts, completions, references, strict=True)])

    j = rewards.get("pairwise_judge", judge_fn=batch_judge, batched=True)
    np.testing.assert_array_equal(j(["q"] * 2, ["aaa", "a"], ["aa", "aa"]), [1, -1])
    assert calls == [2]
    short = rewards.get("pairwise_judge", judge_fn=lambda p, c, r: [1], batched=True, name="llm")
    with pytest.raises(RewardError, match=r"judge 'llm' returned 1 verdicts for 2 completions"):
        short(["q"] * 2, ["a", "b"], ["a", "b"])


@pytest.mark.parametrize("bad", [2, 0.5, "yes", None, float("nan"), True])
def test_pairwise_judge_rejects_values_outside_minus_one_zero_one(bad):
    def my_judge(prompt, completion, reference):
        return bad if completion == "b" else 1

    j = rewards.get("pairwise_judge", judge_fn=my_judge)
    with pytest.raises(RewardError, match=r"reward 'pairwise_judge'.*judge 'my_judge' returned .* at index 1"):
        j(["q"] * 2, ["a", "b"], ["r", "r"])


def test_pairwise_judge_needs_references():
    j = rewards.get("pairwise_judge", judge_fn=longer_wins)
    with pytest.raises(RewardError, match=r"judge 'longer_wins' needs a reference, but reference 0 is None"):
        j(["q"], ["a"], [None])
    with pytest.raises(RewardError, match=r"judge 'longer_wins' compares with references"):
        j(["q"], ["a"])
    with pytest.raises(RewardError, match=r"judge_fn must be callable"):
        rewards.get("pairwise_judge", judge_fn="gpt-4")


def test_judge_from_absolute_reward():
    length = rewards.resolve(lambda p, c, r=None, **k: [float(len(x)) for x in c], name="len")
    j = rewards.PairwiseJudge.from_reward(length, margin=1.0)
    assert j.name == "sign(len)"
    np.testing.assert_array_equal(j(["q"] * 3, ["aaaa", "a", "aaa"], ["aa", "aaa", "aa"]), [1, -1, 0])


# --------------------------------------------------------------------------- composites

def test_length_penalty():
    chars = rewards.get("length_penalty", target=3, coef=0.5)
    np.testing.assert_allclose(chars(["q"] * 3, ["ab", "abcde", "abcdefghij"]), [0.0, -1.0, -3.5])
    capped = rewards.get("length_penalty", target=3, coef=0.5, cap=2.0)
    np.testing.assert_allclose(capped(["q"] * 2, ["abcde", "abcdefghij"]), [-1.0, -2.0])
    words = rewards.get("length_penalty", target=2, unit="words", coef=1.0)
    np.testing.assert_allclose(words(["q"] * 2, ["one two", "one two three  four"]), [0.0, -2.0])
    with pytest.raises(RewardError, match="length_penalty: unit must be"):
        rewards.get("length_penalty", target=3, unit="tokens")


def test_weighted_sum_components_sum_to_total():
    ws = rewards.get("weighted_sum",
                     rewards=["exact_match", ("length_penalty", {"target": 3, "coef": 0.5})],
                     weights=[2.0, 1.0])
    comps, refs = ["abc", "abcde", "xyz"], ["abc", "abcde", "abc"]
    total, parts = ws.score(["q"] * 3, comps, refs)
    assert list(parts) == ["exact_match", "length_penalty"]
    np.testing.assert_allclose(parts["exact_match"], [2.0, 2.0, 0.0])
    np.testing.assert_allclose(parts["length_penalty"], [0.0, -1.0, 0.0])
    np.testing.assert_allclose(total, [2.0, 1.0, 0.0])
    np.testing.assert_allclose(ws(["q"] * 3, comps, refs), total)
    assert not ws.pairwise


def test_weighted_sum_spec_forms_and_labels():
    def shout(prompts, completions, references=None, **kw):
        return [float(c.isupper()) for c in completions]

    ws = rewards.get("weighted_sum", rewards=[{"name": "regex", "pattern": "a"}, {"name": "regex", "pattern": "b"},
                                              shout])
    _, parts = ws.score(["q"] * 2, ["ab", "B"])
    assert list(parts) == ["regex", "regex_1", "shout"]
    np.testing.assert_allclose(parts["regex"] + parts["regex_1"] + parts["shout"], [2.0, 1.0])
    labelled = rewards.get("weighted_sum", rewards=["vader", "vader"], weights=[1, -1], labels=["pos", "neg"])
    np.testing.assert_allclose(labelled(["q"], ["great"]), [0.0])


def test_weighted_sum_errors_name_composite_and_part():
    def broken(prompts, completions, references=None, **kw):
        raise KeyError("oops")

    ws = rewards.get("weighted_sum", rewards=["vader", broken])
    msg = r"reward 'weighted_sum'.*reward 'broken' \(in weighted_sum\) raised KeyError"
    with pytest.raises(RewardError, match=msg):
        ws(["q"], ["x"])
    with pytest.raises(RewardError, match=r"weighted_sum: 1 weights for 2 rewards"):
        rewards.get("weighted_sum", rewards=["vader", "bleu"], weights=[1.0])
    with pytest.raises(RewardError, match=r"unknown reward 'vadr'.*'vader'"):
        rewards.get("weighted_sum", rewards=["vadr"])
    with pytest.raises(RewardError, match=r"weighted_sum: need 2 distinct labels"):
        rewards.get("weighted_sum", rewards=["vader", "bleu"], labels=["x", "x"])


def test_weighted_sum_pairwise_only_if_all_parts_are():
    judge = rewards.PairwiseJudge(longer_wins)
    both = rewards.get("weighted_sum", rewards=[judge, rewards.PairwiseJudge(longer_wins, name="again")],
                       weights=[0.5, 0.5])
    assert both.pairwise
    np.testing.assert_array_equal(both.reference_rewards(["q"], ["abc"]), [0.0])
    assert not rewards.get("weighted_sum", rewards=[judge, "vader"]).pairwise


def test_scaled_and_clipped():
    length = lambda p, c, r=None, **k: [float(len(x)) for x in c]  # noqa: E731
    scaled = rewards.get("scaled", reward=length, scale=2.0, shift=-1.0)
    np.testing.assert_allclose(scaled(["q"] * 2, ["a", "abc"]), [1.0, 5.0])
    clipped = rewards.get("clipped", reward=length, low=1.5, high=2.5)
    np.testing.assert_allclose(clipped(["q"] * 3, ["a", "ab", "abcd"]), [1.5, 2.0, 2.5])
    nested = rewards.get("clipped", reward={"name": "scaled", "reward": length, "scale": -1.0}, high=-2.0)
    np.testing.assert_allclose(nested(["q"] * 2, ["a", "abc"]), [-2.0, -3.0])
    judge = rewards.PairwiseJudge(longer_wins)
    assert rewards.get("scaled", reward=judge, scale=3.0).pairwise
    assert not rewards.get("scaled", reward=judge, shift=1.0).pairwise
    assert rewards.get("clipped", reward=judge, low=-0.5, high=0.5).pairwise
    with pytest.raises(RewardError, match=r"clipped: low \(2\) > high \(1\)"):
        rewards.get("clipped", reward=length, low=2, high=1)
    with pytest.raises(RewardError, match=r"clipped: give low, high or both"):
        rewards.get("clipped", reward=length)


def test_pairwise_judge_receives_the_columns_it_names():
    def per_row(prompt, completion, reference, *, target):
        return 1 if target in completion else -1

    def batched(prompts, completions, references, **columns):
        return [1 if t in c else 0 for c, t in zip(completions, columns["target"], strict=True)]

    prompts, completions, refs = ["p", "q"], ["has x", "none"], ["r", "r"]
    per_row_judge = rewards.get("pairwise_judge", judge_fn=per_row)
    assert per_row_judge(prompts, completions, refs, target=["x", "y"], other=[1, 2]).tolist() == [1.0, -1.0]
    batched_judge = rewards.get("pairwise_judge", judge_fn=batched, batched=True)
    assert batched_judge(prompts, completions, refs, target=["x", "n"]).tolist() == [1.0, 1.0]
    plain = rewards.get("pairwise_judge", judge_fn=lambda p, c, r: 0)  # names no column: gets none
    assert plain(prompts, completions, refs, target=["x", "y"]).tolist() == [0.0, 0.0]
