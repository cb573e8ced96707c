"""The tiny Qwen2-shaped chat model used to test real-model code paths offline."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from algos.tiny_chat import build_tiny_chat_model


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("grao-cache"))


def test_it_is_built_as_safetensors_and_cached_by_its_arguments(tmp_path):
    # How long the build takes is not asserted here (a busy machine is slow); it takes about a second.
    path = build_tiny_chat_model(tmp_path)
    assert path.parent == tmp_path / "tiny-chat" and (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin"))
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_chat_model(tmp_path) == path                      # reused, not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    other = build_tiny_chat_model(tmp_path, seed=1)
    assert other != path and sorted(p.name for p in (tmp_path / "tiny-chat").iterdir()) == sorted([path.name,
                                                                                                  other.name])
    assert json.loads((other / "tiny_chat.json").read_text())["seed"] == 1


def test_the_cache_defaults_to_grao_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAO_CACHE", str(tmp_path))
    assert build_tiny_chat_model().parent == tmp_path / "tiny-chat"


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab_size >= 300"):
        build_tiny_chat_model(tmp_path, vocab_size=100)


def test_tokenizer_renders_chatml_with_a_generation_prompt(chat_dir):
    tok = AutoTokenizer.from_pretrained(chat_dir)
    messages = [{"role": "user", "content": "What is two plus two?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be brief."}, *messages,
                   {"role": "assistant", "content": "Four."}]
    assert tok.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is two plus two?<|im_end|>\n"
        "<|im_start|>assistant\nFour.<|im_end|>\n")
    # special tokens are single ids; text round-trips through the byte-level BPE
    ids = tok("<|im_start|>user\nhéllo 中文<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "<|im_start|>user\nhéllo 中文<|im_end|>"
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)


def test_model_has_two_eos_ids_and_runs_forward_and_generate(chat_dir):
    tok = AutoTokenizer.from_pretrained(chat_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    im_end, endoftext = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert model.generation_config.eos_token_id == [im_end, endoftext]
    assert model.generation_config.pad_token_id == endoftext == tok.pad_token_id
    assert model.config.model_type == "qwen2" and model.config.eos_token_id == im_end
    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 1_000_000
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    batch = tok([text, "short"], add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()
    out = model.generate(**tok([text], add_special_tokens=False, return_tensors="pt"), max_new_tokens=3,
                         do_sample=False)
    assert out.shape[1] <= batch["input_ids"].shape[1] + 3


def test_same_arguments_give_the_same_weights(tmp_path, chat_dir):
    a = AutoModelForCausalLM.from_pretrained(chat_dir)
    b = AutoModelForCausalLM.from_pretrained(build_tiny_chat_model(tmp_path))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
