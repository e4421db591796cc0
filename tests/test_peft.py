"""LoRA (tuneforge.peft) against PEFT on the reference: adapters in both directions on every family, every code
path seeing the adapter exactly (training and eval, the encoders' fast and first-token paths), gradients only to the
adapter, merging, the Trainer (adapter-only checkpoints, exact resume after SIGKILL, two processes, best model) and
the bad-input contract."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, LoraConfig, PeftModel,
                       Trainer, TrainingArguments, get_peft_model)
from tuneforge.checkpoint_io import CheckpointError

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

HERE = Path(__file__).parent
ENCODER = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
LLAMA = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=37, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# name -> (model_type, config values, task)
FAMILIES = {
    "bert-cls": ("bert", dict(ENCODER, max_position_embeddings=64), "SEQ_CLS"),
    "bert-base": ("bert", dict(ENCODER, max_position_embeddings=64), "FEATURE_EXTRACTION"),
    "roberta-cls": ("roberta", dict(ENCODER, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1),
                    "SEQ_CLS"),
    "distilbert-cls": ("distilbert", dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                          dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0), "SEQ_CLS"),
    "llama-clm": ("llama", LLAMA, "CAUSAL_LM"),
    "qwen2-cls": ("qwen2", LLAMA, "SEQ_CLS"),  # q/k/v biases
    "gpt2-clm": ("gpt2", dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), "CAUSAL_LM"),
}
CLASSES = {"SEQ_CLS": (transformers.AutoModelForSequenceClassification, AutoModelForSequenceClassification),
           "CAUSAL_LM": (transformers.AutoModelForCausalLM, AutoModelForCausalLM),
           "FEATURE_EXTRACTION": (transformers.AutoModel, AutoModel)}


def base_folder(name, tmp_path):
    """A random reference checkpoint of the family, saved to a folder."""
    model_type, values, task = FAMILIES[name]
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **values, num_labels=3)
    folder = tmp_path / f"{name}-base"
    CLASSES[task][0].from_config(config).save_pretrained(folder)
    return folder


def load(name, folder, ours=True):
    model = CLASSES[FAMILIES[name][2]][1 if ours else 0].from_pretrained(folder)
    return model.eval()


def lora_config(name, **extra):
    # init_lora_weights=False: B is random too, so the adapter changes every output from the start.
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type=FAMILIES[name][2],
                      init_lora_weights=False, **extra)


def batch(name, lengths=(7, 3, 12, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    pad = 1 if name.startswith("roberta") else 0
    ids = torch.full((len(lengths), max(lengths) + 3), pad)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, 99, (n,), generator=g)
        mask[row, :n] = 1
    task = FAMILIES[name][2]
    labels = (torch.tensor([0, 2, 1, 1]) if task == "SEQ_CLS" else ids.masked_fill(mask == 0, -100)
              if task == "CAUSAL_LM" else None)
    return ids, mask, labels


def outputs(model, name, ids, mask, labels):
    out = model(input_ids=ids, attention_mask=mask, **({} if labels is None else {"labels": labels}))
    key = "last_hidden_state" if FAMILIES[name][2] == "FEATURE_EXTRACTION" else "logits"
    values = out[key]
    if values.dim() == 3:
        values = values[mask.bool()]  # the real tokens (ours are zero at padding)
    weights = torch.randn(values.shape, generator=torch.Generator().manual_seed(2))  # a loss LayerNorm cannot flatten
    loss = out["loss"] if labels is not None else (values * weights).sum()
    return values, loss


def lora_grads(model):
    return {k: p.grad for k, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_path_sees_the_adapter_exactly_as_peft_computes_it(name, tmp_path):
    """An adapter on every linear layer, with B non-zero, saved by tuneforge and loaded by PEFT on the reference:
    outputs, losses and the adapter's gradients agree, in training (the written-out CPU paths, the first-token
    path) and in evaluation; the base weights get no gradient at all."""
    folder = base_folder(name, tmp_path)
    ours = get_peft_model(load(name, folder), lora_config(name))
    ours.save_pretrained(tmp_path / "adapter")
    ref = peft.PeftModel.from_pretrained(load(name, folder, ours=False), tmp_path / "adapter", is_trainable=True)
    plain = load(name, folder)
    ids, mask, labels = batch(name)
    for training in (False, True):
        results = []
        for model in (ours, ref, plain):
            model.train(training)
            with torch.set_grad_enabled(training):
                results.append(outputs(model, name, ids, mask, labels))
        (got, got_loss), (expected, expected_loss), (base, _) = results
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4, msg=f"training={training}")
        assert (got - base).abs().max() > 1e-3, "the adapter changes the outputs"
        torch.testing.assert_close(got_loss, expected_loss, atol=1e-5, rtol=1e-4)
    got_loss.backward()
    expected_loss.backward()
    ours_grads, ref_grads = lora_grads(ours), lora_grads(ref)
    assert ours_grads.keys() == ref_grads.keys()
    assert any(".lora_A." in k for k in ours_grads) and any(".lora_B." in k for k in ours_grads)
    for key in ref_grads:
        torch.testing.assert_close(ours_grads[key], ref_grads[key], atol=1e-5, rtol=1e-4, msg=key)
    frozen = [k for k, p in ours.named_parameters() if not p.requires_grad]
    assert frozen and all(ours.get_parameter(k).grad is None for k in frozen)
    assert all(".lora_" in k or ".modules_to_save." in k for k in ours_grads)


@pytest.mark.parametrize("name", ["bert-cls", "llama-clm", "gpt2-clm", "roberta-cls"])
def test_peft_adapters_load_in_tuneforge_and_merge(name, tmp_path):
    """PEFT -> tuneforge: the same outputs; merge_and_unload equals the unmerged model and its folder loads in the
    reference without PEFT."""
    folder = base_folder(name, tmp_path)
    torch.manual_seed(1)
    ref = peft.get_peft_model(load(name, folder, ours=False), peft.LoraConfig(
        r=4, lora_alpha=16, target_modules="all-linear", task_type=FAMILIES[name][2], init_lora_weights=False))
    ref.save_pretrained(tmp_path / "adapter")
    ours = PeftModel.from_pretrained(load(name, folder), tmp_path / "adapter")
    assert not any(p.requires_grad for p in ours.parameters())
    ids, mask, labels = batch(name)
    with torch.no_grad():
        expected, _ = outputs(ref.eval(), name, ids, mask, labels)
        got, _ = outputs(ours, name, ids, mask, labels)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        merged = ours.merge_and_unload()
        assert not any(".lora_" in k or "base_layer" in k for k in merged.state_dict())
        torch.testing.assert_close(outputs(merged, name, ids, mask, labels)[0], got, atol=1e-5, rtol=1e-4)
        merged.save_pretrained(tmp_path / "merged")
        reference = load(name, tmp_path / "merged", ours=False)
        torch.testing.assert_close(outputs(reference, name, ids, mask, labels)[0], got, atol=1e-5, rtol=1e-4)


def test_names_layout_and_trainable_count_match_peft(tmp_path, capsys):
    folder = base_folder("bert-cls", tmp_path)
    ours = get_peft_model(load("bert-cls", folder), LoraConfig(r=4, target_modules=["query", "value"],
                                                               task_type="SEQ_CLS"))
    ref = peft.get_peft_model(load("bert-cls", folder, ours=False), peft.LoraConfig(
        r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert {k for k, p in ours.named_parameters() if p.requires_grad} == \
        {k for k, p in ref.named_parameters() if p.requires_grad}
    ours.print_trainable_parameters()
    ref.print_trainable_parameters()
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == printed[1]
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    a, b = load_file(tmp_path / "ours" / "adapter_model.safetensors"), load_file(tmp_path / "ref" /
                                                                                 "adapter_model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert a["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"].shape == (4, 32)
    assert a["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"].shape == (32, 4)
    assert "base_model.model.classifier.weight" in a
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder) and config["peft_type"] == "LORA"


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trainable_biases_match_peft(bias, tmp_path):
    folder = base_folder("bert-cls", tmp_path)
    ours = get_peft_model(load("bert-cls", folder), LoraConfig(r=4, target_modules=["query"], bias=bias,
                                                               task_type="SEQ_CLS"))
    ref = peft.get_peft_model(load("bert-cls", folder, ours=False), peft.LoraConfig(
        r=4, target_modules=["query"], bias=bias, task_type="SEQ_CLS"))
    assert {k for k, p in ours.named_parameters() if p.requires_grad} == \
        {k for k, p in ref.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(0.01)
    ours.save_pretrained(tmp_path / "adapter")
    again = PeftModel.from_pretrained(load("bert-cls", folder), tmp_path / "adapter")
    ids, mask, _ = batch("bert-cls")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(ids, attention_mask=mask).logits,
                                   ours.eval()(ids, attention_mask=mask).logits)


def test_dropout_and_disable_adapter(tmp_path):
    folder = base_folder("bert-cls", tmp_path)
    plain = load("bert-cls", folder)
    ours = get_peft_model(load("bert-cls", folder), lora_config("bert-cls", lora_dropout=0.5))
    ids, mask, _ = batch("bert-cls")
    with torch.no_grad():
        with ours.disable_adapter():
            torch.testing.assert_close(ours(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits)
        ours.train()
        torch.manual_seed(0)
        a = ours(ids, attention_mask=mask).logits
        b = ours(ids, attention_mask=mask).logits
        assert not torch.equal(a, b), "LoRA dropout is on in training"



@pytest.mark.parametrize("name, targets, bias", [("bert-cls", "all-linear", "all"),
                                                  ("bert-cls", ["query", "value"], "none"),
                                                  ("distilbert-cls", ["q_lin", "k_lin", "lin2"], "lora_only")])
def test_encoder_fast_paths_fold_the_adapter(name, targets, bias, tmp_path, monkeypatch):
    """Training on CPU, the encoder blocks keep their written-out Functions with the adapters folded into the
    GEMMs (any subset of the fused query/key/value, trainable biases), and the last block its first-token path:
    only adapters on the B first-token rows run as modules, and the loss and every gradient equal the module
    path's (forced by a hook, which a fast path must respect)."""
    from tuneforge.peft import lora
    calls = []
    forward = lora.Linear.forward
    monkeypatch.setattr(lora.Linear, "forward", lambda self, x: calls.append(x.shape[0]) or forward(self, x))
    model = get_peft_model(load(name, base_folder(name, tmp_path)), LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, bias=bias, task_type="SEQ_CLS", init_lora_weights=False)).train()
    adapted = [m for m in model.modules() if isinstance(m, lora.Linear)]
    ids, mask, labels = batch(name)

    def loss_and_grads():
        model.zero_grad()
        calls.clear()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    fast_loss, fast_grads = loss_and_grads()
    assert calls and all(rows == len(ids) for rows in calls), "only adapters on the first-token rows run as modules"
    for m in adapted:
        m.register_forward_hook(lambda *_: None)
    module_loss, module_grads = loss_and_grads()
    assert len(calls) == len(adapted)
    torch.testing.assert_close(fast_loss, module_loss, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == module_grads.keys()
    assert any(k.endswith("bias") and ".modules_to_save." not in k for k in fast_grads) == (bias != "none")
    for key in module_grads:
        torch.testing.assert_close(fast_grads[key], module_grads[key], atol=1e-5, rtol=1e-4, msg=key)


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_configs_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="r=0: the rank must be a positive integer"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="r=-2"):
        LoraConfig(r=-2)
    model = load("bert-cls", base_folder("bert-cls", tmp_path))
    with pytest.raises(ValueError, match=r"entry 'q_proj' matches no linear layer .*named: .*dense, key, query, value"):
        get_peft_model(model, LoraConfig(target_modules=["query", "q_proj"]))
    with pytest.raises(ValueError, match="LoraConfig bias='some'"):
        LoraConfig(bias="some")


def test_an_adapter_for_another_base_is_refused_naming_both(tmp_path):
    bert, llama = base_folder("bert-cls", tmp_path), base_folder("llama-clm", tmp_path)
    get_peft_model(load("bert-cls", bert), lora_config("bert-cls")).save_pretrained(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=rf"trained on {bert}\) does not fit .*LlamaForCausalLM"):
        PeftModel.from_pretrained(load("llama-clm", llama), tmp_path / "adapter")
    wider = tmp_path / "wider"
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(
        **{**FAMILIES["bert-cls"][1], "hidden_size": 48}, num_labels=3)).save_pretrained(wider)
    with pytest.raises(CheckpointError, match=rf"trained on {bert}\) does not fit BertForSequenceClassification "
                                              rf"\({wider}\): .*is \[4, 32\] in the adapter, \[4, 48\] here"):
        PeftModel.from_pretrained(load("bert-cls", wider), tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                                         "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True is not supported"):
        PeftModel.from_pretrained(load("bert-cls", bert), tmp_path / "adapter")


# ------------------------------------------------------------------------------------------------ the Trainer


def rows(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 10, (1,), generator=g))
        ids = torch.randint(5, 99, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length, "label": ids[0] % 3})
    return out


def test_trainer_optimizes_and_saves_only_the_adapter(tmp_path):
    folder = base_folder("bert-cls", tmp_path)
    model = get_peft_model(load("bert-cls", folder), LoraConfig(r=4, target_modules="all-linear",
                                                                task_type="SEQ_CLS"))
    frozen = {k: p.clone() for k, p in model.named_parameters() if not p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8,
                             learning_rate=1e-2, eval_strategy="steps", eval_steps=2, save_steps=2,
                             load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False,
                             disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, args=args, train_dataset=rows(), eval_dataset=rows(8, seed=1))
    trainer.train()
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(torch.equal(p, frozen[k]) for k, p in model.named_parameters() if k in frozen)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "adapter_config.json").is_file()
    assert not (checkpoint / "model.safetensors").exists(), "the frozen base is not saved"
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert all(".lora_" in k or ".classifier." in k for k in saved)
    # load_best_model_at_end put the best checkpoint's adapter back.
    best = Path(trainer.state.best_model_checkpoint)
    best_state = PeftModel.from_pretrained(load("bert-cls", folder), best).adapter_state_dict()
    assert all(torch.equal(v, model.adapter_state_dict()[k]) for k, v in best_state.items())
    trainer.save_model(str(tmp_path / "final"))
    again = PeftModel.from_pretrained(load("bert-cls", folder), tmp_path / "final")
    ids, mask, _ = batch("bert-cls")
    with torch.no_grad():
        torch.testing.assert_close(again(ids, attention_mask=mask).logits,
                                   model.eval()(ids, attention_mask=mask).logits)
    # and PEFT loads the Trainer's folder on the reference
    ref = peft.PeftModel.from_pretrained(load("bert-cls", folder, ours=False), tmp_path / "final")
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=ids, attention_mask=mask).logits,
                                   model(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)


def run_child(output_dir, mode, step, torchrun=False, **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), "TEST_LORA": "1", **env}
    command = [sys.executable, str(HERE / "trainer_child.py")]
    if torchrun:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
                   str(HERE / "trainer_child.py")]
    return subprocess.run([*command, str(output_dir), mode, str(step)], capture_output=True, text=True,
                          timeout=600, cwd=HERE, env=env)


def losses(folder):
    history = json.loads((folder / "result" / "log_history.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """A tiny Llama causal LM with LoRA on every linear layer, 12 steps in one process (dropout off, so that two
    processes can be compared with it)."""
    folder = tmp_path_factory.mktemp("one")
    done = run_child(folder, "full", 0, TEST_MODEL="llama-clm", TEST_NO_DROPOUT="1")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_resume_after_sigkill_is_exact_with_lora(one_process, tmp_path):
    full, killed = one_process, tmp_path / "killed"
    env = dict(TEST_MODEL="llama-clm", TEST_NO_DROPOUT="1")
    assert run_child(killed, "kill_after_save", 4, **env).returncode == -9
    assert not (killed / "checkpoint-4" / "model.safetensors").exists()
    assert (killed / "checkpoint-4" / "adapter_model.safetensors").exists()
    done = run_child(killed, "resume", 0, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = losses(full), losses(killed)
    assert all(got[s] == expected[s] for s in range(5, 13))
    a = load_file(full / "result" / "adapter_model.safetensors")
    b = load_file(killed / "result" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_run(one, two):
    """Two runs of the 12-step LoRA job: the same losses at every step and the same adapter; returns the second
    run's losses and adapter."""
    la, lb = losses(one), losses(two)
    assert sorted(la) == sorted(lb) == list(range(1, 13))
    assert all(lb[s] == pytest.approx(la[s], rel=1e-4) for s in la)
    a = load_file(one / "result" / "adapter_model.safetensors")
    b = load_file(two / "result" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    return lb, b


def test_two_processes_equal_one_with_lora(one_process, tmp_path):
    if not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not found beside the interpreter")
    one, two = one_process, tmp_path / "two"
    done = run_child(two, "full", 0, torchrun=True, TEST_BATCH="2", TEST_MODEL="llama-clm", TEST_NO_DROPOUT="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(one, two)


def test_fsdp_with_lora_shards_the_frozen_base_and_equals_one_process(one_process, tmp_path):
    """FSDP (two processes of 2) against the one-process run (4 x accumulation 2): every parameter sharded, the
    frozen base too; the same losses and adapter; checkpoints hold only the adapter; resuming the sharded run from
    its step-8 checkpoint ends where it ended."""
    if not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not found beside the interpreter")
    import shutil
    one, two = one_process, tmp_path / "fsdp"
    env = dict(TEST_BATCH="2", TEST_MODEL="llama-clm", TEST_NO_DROPOUT="1", TEST_FSDP="1")
    done = run_child(two, "full", 0, torchrun=True, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):  # each rank holds about half of the model
        shards = json.loads((tmp_path / f"fsdp.shards-{rank}.json").read_text())
        assert shards["sharded"] == shards["parameters"] and shards["frozen"] > 0
        assert shards["local_numel"] < 0.6 * shards["numel"]
    lb, b = assert_same_run(one, two)
    assert not (two / "checkpoint-12" / "model.safetensors").exists()
    c = load_file(two / "checkpoint-12" / "adapter_model.safetensors")  # gathered from the shards
    assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in c)
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed, ignore=shutil.ignore_patterns("checkpoint-12", "result"))
    done = run_child(resumed, "resume", 0, torchrun=True, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(losses(resumed)[s] == lb[s] for s in range(9, 13))
    r = load_file(resumed / "result" / "adapter_model.safetensors")
    assert all(torch.equal(r[k], b[k]) for k in b)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, minilm_dir):
    """`tuneforge train --lora` on a tiny random BERT with the MiniLM tokenizer."""
    from test_cli import make_rows, run, write_rows
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64)).save_pretrained(root / "base")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (root / "base" / name).write_bytes((minilm_dir / name).read_bytes())
    train, evaluate = write_rows(root / "train.csv", make_rows(48, 1)), write_rows(root / "eval.csv", make_rows(12, 2))
    code, out, err = run("train", "--model", root / "base", "--train", train, "--eval", evaluate, "--output-dir",
                         root / "out", "--epochs", 2, "--batch-size", 8, "--lr", 1e-2, "--lora", "--lora-r", 4,
                         "--lora-target", "query,value")
    assert code == 0, err
    return root, json.loads(out.strip().splitlines()[-1]), run


def test_cli_lora_trains_evaluates_and_merges(cli_run):
    root, final, run = cli_run
    out = root / "out"
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["query", "value"]
    code, stdout, err = run("evaluate", "--model", out, "--data", root / "eval.csv")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["eval_accuracy"] == final["eval_accuracy"]
    code, _, err = run("merge", "--model", out, "--output", root / "merged")
    assert code == 0, err
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(root / "merged").eval()
    assert merged.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    adapter = peft.PeftModel.from_pretrained(transformers.AutoModelForSequenceClassification.from_pretrained(
        root / "base", num_labels=3, ignore_mismatched_sizes=True), out).eval()
    ids = torch.tensor([[101, 1996, 2143, 2001, 2307, 102]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("argv,message", [
    (["--lora", "--lora-r", "0"], "r=0: the rank must be a positive integer"),
    (["--lora", "--lora-target", "q_proj"], "entry 'q_proj' matches no linear layer"),
    (["--lora-r", "4"], "--lora-r without --lora"),
])
def test_cli_bad_lora_options_are_one_line_and_exit_2(cli_run, argv, message):
    root, _, run = cli_run
    code, _, err = run("train", "--model", root / "base", "--train", root / "train.csv", "--output-dir",
                       root / "bad", "--max-steps", 1, *argv)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_hub_push_uploads_the_adapter_with_a_card_naming_the_base(hub_env, monkeypatch, tmp_path):
    from huggingface_hub import HfApi
    from hub_testing import TOKEN, unique_repo
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    folder = base_folder("bert-cls", tmp_path)
    model = get_peft_model(load("bert-cls", folder), LoraConfig(r=4, target_modules="all-linear",
                                                                task_type="SEQ_CLS"))
    name = unique_repo("tiny-lora", namespace=None)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8,
                             learning_rate=1e-2, save_strategy="no", push_to_hub=True, hub_model_id=name,
                             hub_token=TOKEN, disable_tqdm=True, report_to=[])
    Trainer(model=model, args=args, train_dataset=rows()).train()
    api = HfApi(endpoint=hub_env.endpoint)
    repo_id = f"{api.whoami(token=TOKEN)['name']}/{name}"
    files = set(api.list_repo_files(repo_id, token=TOKEN))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert "model.safetensors" not in files
    from tuneforge import hub
    card = (hub.resolve_folder(repo_id, allow_patterns=["README.md"], token=TOKEN) / "README.md").read_text()
    assert "- lora" in card and f"`{folder.name}`" in card and "LoRA adapter in PEFT's format" in card
    again = PeftModel.from_pretrained(load("bert-cls", folder), repo_id, token=TOKEN)
    ids, mask, _ = batch("bert-cls")
    with torch.no_grad():
        torch.testing.assert_close(again(ids, attention_mask=mask).logits,
                                   model.eval()(ids, attention_mask=mask).logits)
