"""Learned rewards: the tiny Bradley-Terry model (train, score, save/load) and HF sequence classifiers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

import rewards
from rewards import BradleyTerryRewardModel, BTConfig, RewardError, bradley_terry_loss, train_bradley_terry
from rewards.tiny import byte_tokenizer

WORDS = ["apple", "river", "stone", "cloud", "table", "green", "quick", "happy", "lamp", "ocean", "paper", "music",
         "small", "bright"]


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: keep torch from oversubscribing them."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def marker_pairs(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Chosen answers contain "thanks", rejected ones do not; both have five words."""
    rng = random.Random(seed)
    prompts, chosen, rejected = [], [], []
    for _ in range(n):
        words = rng.sample(WORDS, 4)
        words.insert(rng.randrange(5), "thanks")
        prompts.append(f"Reply to {rng.choice(WORDS)}: ")
        chosen.append(" ".join(words))
        rejected.append(" ".join(rng.sample(WORDS, 5)))
    return prompts, chosen, rejected


@pytest.fixture(scope="module")
def trained() -> BradleyTerryRewardModel:
    torch.set_num_threads(1)
    return train_bradley_terry(*marker_pairs(256, seed=0), steps=40, lr=3e-3, batch_size=16, seed=0)


# --------------------------------------------------------------------------- Bradley-Terry

def test_bradley_terry_loss_hand_computed():
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 0.0]))
    expected = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_model_is_tiny_and_reads_the_last_real_token():
    model = BradleyTerryRewardModel()
    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 1_000_000
    ids, mask = model.encode(["ab", "a"], ["c", ""])
    tok = byte_tokenizer()
    # BOS + bytes + EOS, right-padded with pad=0
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    assert ids.tolist() == [[bos, *tok("abc")["input_ids"], eos], [bos, *tok("a")["input_ids"], eos, pad, pad]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # the head reads position 4 of row 0 and position 2 (the EOS) of row 1
    hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = model.head(torch.stack([hidden[0, 4], hidden[1, 2]])).squeeze(-1)
    torch.testing.assert_close(model(ids, mask), expected)


def test_truncation_keeps_the_end():
    model = BradleyTerryRewardModel(BTConfig(max_length=8))
    ids, _ = model.encode(["x" * 50], ["END"])
    tok = byte_tokenizer()
    assert ids.shape == (1, 8)
    assert tok.decode(ids[0, 1:-1]) == "xxx" + "END"


def test_scores_do_not_depend_on_batch_padding():
    torch.manual_seed(0)
    model = BradleyTerryRewardModel()
    prompts, comps = ["Q: ", "Q: ", "A much longer prompt here: "], ["hi", "a long answer indeed", "x"]
    batched = model.score(prompts, comps, batch_size=3)
    alone = np.array([model.score([p], [c])[0] for p, c in zip(prompts, comps, strict=True)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert not any(p.grad is not None for p in model.parameters())


def test_training_learns_the_preference(trained):
    first, last = trained.history[0], trained.history[-1]
    assert len(trained.history) == 40
    prompts, chosen, rejected = marker_pairs(100, seed=1)  # held out
    accuracy = np.mean(trained.score(prompts, chosen) > trained.score(prompts, rejected))
    # Observed at 1 and 2 threads: loss 0.695 -> 0.004, accuracy 1.00 (0.50 above chance).
    print(f"Bradley-Terry: loss {first['loss']:.3f} -> {last['loss']:.3f}, held-out accuracy {accuracy:.2f} "
          "(asserted: loss halves, accuracy above chance by more than 0.3)")
    assert last["loss"] < 0.5 * first["loss"]
    assert accuracy - 0.5 > 0.3


def test_training_is_seeded_and_leaves_global_rng_alone():
    data = marker_pairs(16, seed=2)
    state = torch.random.get_rng_state()
    a = train_bradley_terry(*data, steps=2, batch_size=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_bradley_terry(*data, steps=2, batch_size=4, seed=3)
    np.testing.assert_array_equal(a.score(data[0], data[1]), b.score(data[0], data[1]))
    with pytest.raises(RewardError, match=r"train_bradley_terry: need equal, non-empty .* got 16/16/15"):
        train_bradley_terry(data[0], data[1], data[2][:15], steps=1)


def test_save_load_round_trip_and_registered_reward(trained, tmp_path):
    prompts, chosen, rejected = marker_pairs(8, seed=4)
    path = trained.save(tmp_path / "rm")
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "reward_config.json"]
    loaded = BradleyTerryRewardModel.load(path)
    np.testing.assert_array_equal(loaded.score(prompts, chosen), trained.score(prompts, chosen))
    by_path = rewards.get("bradley_terry", model=str(path), batch_size=3)
    by_object = rewards.get("bradley_terry", model=trained)
    np.testing.assert_allclose(by_path(prompts, chosen), trained.score(prompts, chosen), atol=1e-5)
    np.testing.assert_array_equal(by_object(prompts, rejected), trained.score(prompts, rejected))
    assert not by_path.pairwise


def test_bradley_terry_bad_paths(tmp_path):
    with pytest.raises(RewardError, match=r"bradley_terry: no saved reward model in '.*nowhere'"):
        rewards.get("bradley_terry", model=tmp_path / "nowhere")
    with pytest.raises(RewardError, match=r"bradley_terry: model must be a path or a BradleyTerryRewardModel"):
        rewards.get("bradley_terry", model=42)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "reward_config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")
    with pytest.raises(RewardError, match=r"is not a bradley_terry config"):
        rewards.get("bradley_terry", model=tmp_path / "other")


# --------------------------------------------------------------------------- sequence classifiers

def save_tiny_classifier(directory, num_labels: int = 2) -> None:
    """A randomly initialised GPT-2 classifier + the byte tokenizer, saved locally (no download)."""
    torch.manual_seed(0)
    labels = {0: "neg", 1: "pos"} if num_labels == 2 else {0: "score"}
    config = GPT2Config(vocab_size=259, n_embd=32, n_layer=1, n_head=2, n_positions=128, num_labels=num_labels,
                        id2label=labels, label2id={v: k for k, v in labels.items()}, pad_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clf")
    save_tiny_classifier(directory)
    return directory


def unpadded_logits(directory, texts: list[str]) -> np.ndarray:
    """Reference: each text alone, no padding, straight through the HF model."""
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        return np.stack([model(**tok(t, return_tensors="pt")).logits[0].numpy() for t in texts])


def test_sequence_classifier_label_logit_and_prob(classifier_dir):
    prompts, comps = ["Say: ", "Say: ", "Tell me more: "], ["yes", "a much longer completion", "no"]
    logits = unpadded_logits(classifier_dir, [p + c for p, c in zip(prompts, comps, strict=True)])
    by_name = rewards.get("sequence_classifier", model=str(classifier_dir), label="pos", batch_size=2)
    np.testing.assert_allclose(by_name(prompts, comps), logits[:, 1], atol=1e-5)
    by_index = rewards.get("sequence_classifier", model=classifier_dir, label=0)
    np.testing.assert_allclose(by_index(prompts, comps), logits[:, 0], atol=1e-5)
    prob = rewards.get("sequence_classifier", model=classifier_dir, label="pos", output="prob")
    expected = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(prob(prompts, comps), expected, atol=1e-5)


def test_sequence_classifier_completion_only_and_model_object(classifier_dir):
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    r = rewards.get("sequence_classifier", model=model, tokenizer=tok, label="pos", inputs="completion")
    comps = ["good", "bad answer"]
    np.testing.assert_allclose(r(["ignored", "prompt"], comps), unpadded_logits(classifier_dir, comps)[:, 1],
                               atol=1e-5)
    # the byte tokenizer has no pair template, so a text pair is the plain concatenation
    pair = rewards.get("sequence_classifier", model=model, tokenizer=tok, label="pos", inputs="pair")
    concat = rewards.get("sequence_classifier", model=model, tokenizer=tok, label="pos", inputs="concat")
    np.testing.assert_allclose(pair(["Q: ", "Q: "], comps), concat(["Q: ", "Q: "], comps), atol=1e-6)
    with pytest.raises(RewardError, match=r"sequence_classifier: pass a tokenizer"):
        rewards.get("sequence_classifier", model=model, label=1)


def test_sequence_classifier_single_logit(tmp_path):
    save_tiny_classifier(tmp_path, num_labels=1)
    r = rewards.get("sequence_classifier", model=tmp_path)
    texts = ["Q: a", "Q: bb"]
    logits = unpadded_logits(tmp_path, texts)[:, 0]
    np.testing.assert_allclose(r(["Q: ", "Q: "], ["a", "bb"]), logits, atol=1e-5)
    prob = rewards.get("sequence_classifier", model=tmp_path, output="prob")
    np.testing.assert_allclose(prob(["Q: ", "Q: "], ["a", "bb"]), 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_sequence_classifier_no_grad_and_no_remote_code(classifier_dir, monkeypatch):
    seen = {}
    original = AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    r = rewards.get("sequence_classifier", model=classifier_dir, label="pos")
    assert seen["trust_remote_code"] is False
    grad_enabled = []
    r.fn.model.register_forward_hook(lambda *a: grad_enabled.append(torch.is_grad_enabled()))
    r(["p"] * 3, ["a", "b", "c"])
    assert grad_enabled == [False]  # one batched forward, no graph


def test_sequence_classifier_errors(classifier_dir, tmp_path):
    with pytest.raises(RewardError, match=r"sequence_classifier: the model has 2 labels .*pass label="):
        rewards.get("sequence_classifier", model=classifier_dir)
    with pytest.raises(RewardError, match=r"unknown label 'positive'; labels: \['neg', 'pos'\]"):
        rewards.get("sequence_classifier", model=classifier_dir, label="positive")
    with pytest.raises(RewardError, match=r"label index 2 out of range for 2 labels"):
        rewards.get("sequence_classifier", model=classifier_dir, label=2)
    with pytest.raises(RewardError, match=r"output must be 'logit' or 'prob'"):
        rewards.get("sequence_classifier", model=classifier_dir, label=1, output="softmax")
    with pytest.raises(RewardError, match=r"sequence_classifier: cannot load model"):
        rewards.get("sequence_classifier", model=tmp_path / "missing")
