"""LoRA on the decoders' training routes: SFTTrainer(peft_config=) as TRL does it (only the adapter trains, the saved
adapter loads in PEFT on the reference model with the same logits, packed rows equal padded ones), the command line
(`train --task causal-lm|sft --lora`, then evaluate, generate and merge on the adapter folder) and FSDP with LoRA
under a real two-process torchrun against one process."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge import AutoModelForCausalLM, LoraConfig, SFTConfig, SFTTrainer, get_peft_model

from sft_child import Tokenizer, rows
from test_cli import last_json, run, write_rows
from test_lm_cli import prompt_completion, texts, tiny_dir  # noqa: F401  (tiny_dir: a module-scoped fixture)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

HERE = Path(__file__).parent
LLAMA = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=37, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
             tie_word_embeddings=True)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A random reference Llama checkpoint (tied embeddings), saved to a folder both libraries load."""
    folder = tmp_path_factory.mktemp("llama-base")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(folder)
    return folder


def sft_args(tmp_path, **extra):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, max_length=32,
                  bf16=False, learning_rate=1e-2, logging_steps=1, save_strategy="no", disable_tqdm=True,
                  report_to=[])
    return SFTConfig(**{**values, **extra})


def lora(**extra):
    # init_lora_weights=False: B is random too, so the adapter changes the outputs from the first step.
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False, **extra})


def test_sft_with_peft_config_trains_only_the_adapter_and_peft_loads_it(base_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    config = lora(task_type="CAUSAL_LM")
    # SFTConfig's default gradient checkpointing stays on: the adapter must train through the recomputation.
    trainer = SFTTrainer(model=model, args=sft_args(tmp_path), train_dataset=rows(24, 0), processing_class=Tokenizer(),
                         peft_config=config)
    peft_model = trainer.model
    assert type(peft_model).__name__ == "PeftModelForCausalLM" and config.base_model_name_or_path is None  # not changed
    start = {k: v.clone() for k, v in peft_model.adapter_state_dict().items()}
    trainer.train()
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in peft_model.parameters() if p.requires_grad}
    for name, p in peft_model.get_base_model().named_parameters():
        if ".lora_" not in name:
            assert p.grad is None, name
            assert torch.equal(p, frozen[name.replace(".base_layer", "")]), name
    after = peft_model.adapter_state_dict()
    assert all(not torch.equal(after[k], start[k]) for k in start), "every A and B moved"
    assert [e["loss"] for e in trainer.state.log_history if "loss" in e][-1] < trainer.state.log_history[0]["loss"]

    trainer.save_model(str(tmp_path / "adapter"))
    saved = tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in saved.iterdir()}
    assert not (saved / "model.safetensors").exists(), "the frozen base is not saved"
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    reference = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_dir), saved)
    ids = torch.randint(3, 99, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(peft_model.eval()(input_ids=ids).logits, reference.eval()(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_packed_sft_with_lora_equals_padded_sequences(base_dir, tmp_path):
    """One step over all rows: packed (sequences in shared rows, position ids that restart) or one sequence per
    padded row, the loss, the token count and the trained adapter are the same."""
    results = {}
    for packing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        torch.manual_seed(1)  # the same adapter initialisation
        trainer = SFTTrainer(model=model, args=sft_args(tmp_path, max_steps=1, per_device_train_batch_size=64,
                                                        packing=packing),
                             train_dataset=rows(24, 0), processing_class=Tokenizer(), peft_config=lora())
        trainer.train()
        log = next(e for e in trainer.state.log_history if "loss" in e)
        results[packing] = log, trainer.model.adapter_state_dict()
    (plain, a), (packed, b) = results[False], results[True]
    assert packed["num_tokens"] == plain["num_tokens"]
    assert packed["loss"] == pytest.approx(plain["loss"], abs=1e-4)
    assert packed["mean_token_accuracy"] == plain["mean_token_accuracy"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-5, msg=key)


def test_an_adapter_on_lm_head_trains_where_trl_refuses_it(base_dir, tmp_path):
    """TRL refuses target_modules with lm_head (its fused LM head reads lm_head.weight, so the adapter would never
    train); tuneforge's LM head calls a replaced module as a module, so it trains (the tied weight stays frozen)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    embedding = model.get_input_embeddings().weight.clone()
    trainer = SFTTrainer(model=model, args=sft_args(tmp_path, max_steps=2), train_dataset=rows(16, 0),
                         processing_class=Tokenizer(), peft_config=LoraConfig(r=4, target_modules=["lm_head"]))
    head = trainer.model.get_base_model().lm_head
    start = head.lora_B["default"].weight.clone()
    trainer.train()
    assert not torch.equal(head.lora_B["default"].weight, start)
    assert head.base_layer.weight is model.get_input_embeddings().weight  # still tied
    assert torch.equal(model.get_input_embeddings().weight, embedding)


def test_sft_peft_config_refusals(base_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with pytest.raises(TypeError, match="peft_config must be a tuneforge LoraConfig"):
        SFTTrainer(model=model, args=sft_args(tmp_path), train_dataset=rows(4, 0), processing_class=Tokenizer(),
                   peft_config=peft.LoraConfig(r=4))
    wrapped = get_peft_model(model, lora())
    with pytest.raises(ValueError, match="PeftModel together with a peft_config"):
        SFTTrainer(model=wrapped, args=sft_args(tmp_path), train_dataset=rows(4, 0), processing_class=Tokenizer(),
                   peft_config=lora())


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def sft_lora_run(tiny_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("sft-lora")
    train = write_rows(root / "train.jsonl", prompt_completion(32, 1))
    evals = write_rows(root / "eval.jsonl", prompt_completion(8, 2))
    code, stdout, stderr = run("train", "--task", "sft", "--model", tiny_dir, "--train", train, "--eval", evals,
                               "--output-dir", root / "out", "--max-steps", 4, "--batch-size", 8, "--lr", 1e-2,
                               "--max-length", 64, "--lora", "--lora-r", 4, "--lora-alpha", 8)
    assert code == 0, stderr
    return root, last_json(stdout), stderr


def test_cli_sft_lora_writes_an_adapter_that_evaluate_generate_and_merge_take(sft_lora_run, tiny_dir):  # noqa: F811
    root, final, stderr = sft_lora_run
    out = root / "out"
    assert "LoRA r=4 on 14 layer(s) (all-linear)" in stderr  # 7 linear layers a block, lm_head left out
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    assert config["base_model_name_or_path"] == str(tiny_dir)
    assert all(".lora_" in k for k in load_file(out / "adapter_model.safetensors"))
    code, stdout, stderr = run("evaluate", "--task", "sft", "--model", out, "--data", root / "eval.jsonl",
                               "--max-length", 64)
    assert code == 0, stderr
    assert last_json(stdout)["eval_loss"] == pytest.approx(final["eval_loss"], abs=1e-5)
    code, _, stderr = run("merge", "--model", out, "--output", root / "merged")
    assert code == 0, stderr
    merged = transformers.AutoModelForCausalLM.from_pretrained(root / "merged").eval()  # no PEFT needed
    adapter = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_dir), out).eval()
    ids = torch.tensor([[1, 504, 2143, 314, 253, 1134]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    completions = []
    for folder in (out, root / "merged"):
        code, stdout, stderr = run("generate", "--model", folder, "--prompt", "the cat?", "--chat",
                                   "--max-new-tokens", 5)
        assert code == 0, stderr
        completions.append(json.loads(stdout.strip()))
    assert completions[0] == completions[1]


def test_cli_causal_lm_lora_on_named_layers(tiny_dir, tmp_path):  # noqa: F811
    train = write_rows(tmp_path / "train.csv", texts(24, 3))
    code, stdout, stderr = run("train", "--task", "causal-lm", "--model", tiny_dir, "--train", train,
                               "--output-dir", tmp_path / "out", "--max-steps", 2, "--batch-size", 8,
                               "--max-length", 32, "--lora", "--lora-target", "q_proj,v_proj")
    assert code == 0, stderr
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["task_type"] == "CAUSAL_LM"
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert len(saved) == 2 * 2 * 2 and not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (("--lora", "--lora-target", "query"), "entry 'query' matches no linear layer"),
    (("--lora-alpha", "4"), "--lora-alpha without --lora"),
    (("--lora", "--gguf-file", "x.gguf"), "--lora with --gguf-file: an adapter's base must be a model folder"),
])
def test_cli_bad_lora_options_for_decoders(tiny_dir, tmp_path, argv, message):  # noqa: F811
    train = write_rows(tmp_path / "train.jsonl", prompt_completion(4, 0))
    code, stdout, stderr = run("train", "--task", "sft", "--model", tiny_dir, "--train", train, "--output-dir",
                               tmp_path / "out", "--max-steps", 1, *argv)
    assert code == 2 and stdout == "" and "Traceback" not in stderr, stderr
    assert message in stderr.strip().splitlines()[-1]

