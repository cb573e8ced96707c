import torch
from conftest import random_policy

from algos import EncodedBatch, Policy


def test_logprobs_do_not_depend_on_padding(policy):
    s = policy.generate(["12+7=", "3+4=", "100-1="], num_samples=2, max_new_tokens=6, seed=0)
    batched = policy.logprobs(s.batch)
    for j in range(len(s.texts)):
        keep_p = s.prompt_mask[j].bool()
        n = int(s.completion_mask[j].sum())
        alone = policy.logprobs(EncodedBatch(s.prompt_ids[j:j + 1, keep_p], s.prompt_mask[j:j + 1, keep_p],
                                             s.completion_ids[j:j + 1, :n], s.completion_mask[j:j + 1, :n]))
        torch.testing.assert_close(alone[0], batched[j, :n], atol=1e-5, rtol=1e-5)
        assert torch.all(batched[j, n:] == 0)


def test_logprobs_match_a_plain_forward_pass(policy):
    logps, mask = policy.text_logprobs(["ab"], ["cd"])
    ids = [policy.tokenizer.bos_token_id, *policy.tokenizer("abcd")["input_ids"], policy.tokenizer.eos_token_id]
    logits = policy.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = torch.stack([logits[t - 1, ids[t]] for t in range(3, len(ids))])  # c, d, eos
    assert mask.tolist() == [[1, 1, 1]]
    torch.testing.assert_close(logps[0], expected, atol=1e-5, rtol=1e-5)


def test_generate_layout_masks_and_seed():
    policy = random_policy()
    a = policy.generate(["1+1=", "22+3="], num_samples=3, max_new_tokens=5, seed=7)
    b = policy.generate(["1+1=", "22+3="], num_samples=3, max_new_tokens=5, seed=7)
    assert a.texts == b.texts and torch.equal(a.completion_ids, b.completion_ids)
    assert a.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert a.completion_ids.shape[0] == 6 and a.completion_ids.shape[1] <= 5
    eos, pad = policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id
    for ids, mask, truncated in zip(a.completion_ids, a.completion_mask, a.truncated, strict=True):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right-padded, no holes
        assert (ids[n:] == pad).all()
        assert bool(truncated) == (eos not in ids[:n].tolist())
        if not truncated:
            assert ids[n - 1] == eos


def test_generate_truncation_and_eos_on_a_forced_model():
    policy = random_policy()
    with torch.no_grad():  # make EOS overwhelmingly likely: every completion is just EOS
        policy.model.lm_head.weight.zero_()
        policy.model.lm_head.weight[policy.tokenizer.eos_token_id] = 1.0
        policy.model.model.norm.weight.fill_(100.0)
    s = policy.generate(["x", "yy"], num_samples=2, max_new_tokens=4, seed=0)
    assert s.texts == ["", "", "", ""]
    assert s.completion_mask.sum(-1).tolist() == [1, 1, 1, 1]
    assert not s.truncated.any()


def test_gradients_flow_and_reference_is_frozen():
    policy = random_policy()
    reference = policy.reference()
    logps, mask = policy.text_logprobs(["a", "bb"], ["xyz", "q"])
    (-logps.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    assert reference.parameters() == []
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(1.0)
    before = policy.text_logprobs(["a"], ["xyz"])[0]
    after = reference.text_logprobs(["a"], ["xyz"])[0]
    assert not torch.allclose(before, after)


def test_save_and_load_round_trip(tmp_path, policy):
    policy.save(tmp_path / "p")
    assert (tmp_path / "p" / "model.safetensors").exists()
    loaded = Policy.from_pretrained(tmp_path / "p")
    x = policy.text_logprobs(["hello "], ["world"])[0]
    y = loaded.text_logprobs(["hello "], ["world"])[0]
    torch.testing.assert_close(x, y)
    assert loaded.generate(["hi"], greedy=True, max_new_tokens=6).texts == \
        policy.generate(["hi"], greedy=True, max_new_tokens=6).texts


def test_empty_completion_is_just_eos(policy):
    logps, mask = policy.text_logprobs(["abc", "abc"], ["", "d"])
    assert mask.sum(-1).tolist() == [1, 2]
    assert torch.isfinite(logps).all()


def test_logprobs_at_a_sampling_temperature(policy):
    """On-policy algorithms score samples under the distribution they were drawn from: softmax(logits / T)."""
    logps, mask = policy.text_logprobs(["ab"], ["cd"], temperature=0.5)
    ids = [policy.tokenizer.bos_token_id, *policy.tokenizer("abcd")["input_ids"], policy.tokenizer.eos_token_id]
    logits = (policy.model(torch.tensor([ids])).logits[0] / 0.5).log_softmax(-1)
    expected = torch.stack([logits[t - 1, ids[t]] for t in range(3, len(ids))])
    torch.testing.assert_close(logps[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logps, policy.text_logprobs(["ab"], ["cd"])[0])


def test_sampling_has_no_hidden_top_k(tmp_path):
    """HF's default top_k=50 would make samples disagree with the log-probs the algorithms train on."""
    policy = random_policy()
    with torch.no_grad():
        policy.model.lm_head.weight.zero_()  # uniform next-token distribution
    policy.save(tmp_path / "uniform")
    loaded = Policy.from_pretrained(tmp_path / "uniform")
    s = loaded.generate(["a"], num_samples=2000, max_new_tokens=1, temperature=1.0, seed=0)
    assert len(set(s.completion_ids[:, 0].tolist())) > 200  # of 258 tokens (pad is never sampled)
    assert policy.tokenizer.pad_token_id not in s.completion_ids[:, 0].tolist()


def test_scoring_without_gradients_runs_in_chunks_with_the_same_numbers():
    policy = random_policy()
    batch = policy.encode(["1+1=", "22+3=", "7-2=", "9="] * 3, ["2", "25", "5", "nine"] * 3)
    with torch.no_grad():
        whole = policy.logprobs(batch, temperature=0.7)
        policy.max_rows = 5  # 12 rows in chunks of 5, 5, 2
        chunked, hidden = policy.logprobs_and_hidden(batch, temperature=0.7)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert hidden.shape == (*batch.completion_ids.shape, policy.model.config.hidden_size)


def test_selective_log_softmax_equals_log_softmax_at_the_ids():
    from algos.policy import selective_log_softmax

    logits = torch.randn(3, 5, 1000, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 1000, (3, 5))
    got = selective_log_softmax(logits, ids)
    want = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (grad_got,) = torch.autograd.grad(got.sum(), logits)
    (grad_want,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-12, atol=1e-12)
