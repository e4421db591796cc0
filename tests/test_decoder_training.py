"""Decoders under the Trainer: causal LM and sequence classification train, accumulation equals the big batch on a
token-normalised loss, a SIGKILLed run resumes exactly, and two torchrun workers equal one process (causal LM and
classifier)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge import DataCollatorForLanguageModeling, Trainer, TrainingArguments
from trainer_child import make_data, make_model

HERE = Path(__file__).parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def args_for(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), disable_tqdm=True, save_strategy="no", learning_rate=1e-3)
    return TrainingArguments(**{**values, **overrides})


@pytest.mark.parametrize("kind,side", [("llama-clm", "right"), ("gpt2-clm", "right"), ("llama-clm", "left")])
def test_causal_lm_accumulation_equals_one_big_batch_token_for_token(kind, side, tmp_path):
    data = make_data(48, labels=False)  # lengths 3-11: micro-batches carry different numbers of tokens

    class Tokenizer:  # the collator pads on the tokenizer's side
        pad_token_id, padding_side = 0, side
    weights = []
    for batch, accum in ((8, 1), (2, 4)):
        model, _ = make_model(kind, dropout=False)
        collator = DataCollatorForLanguageModeling(Tokenizer(), mlm=False)
        args = args_for(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_steps=3)
        Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in weights[0]:
        a, b = weights[1][key], weights[0][key]
        if key.endswith("c_attn.bias"):  # its key part moves no score (softmax ignores a shift): the gradient
            a, b = (torch.cat([w[:32], w[64:]]) for w in (a, b))  # is float noise, which Adam scales up to lr
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=key)


def test_decoder_classifier_and_language_model_learn(tmp_path):
    model, _ = make_model("llama-cls", dropout=False)
    trainer = Trainer(model=model, args=args_for(tmp_path, per_device_train_batch_size=8, num_train_epochs=8,
                                                 logging_steps=5),
                      train_dataset=make_data(40), eval_dataset=make_data(40))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < 0.7 * before
    model, collator = make_model("gpt2-clm", dropout=False)
    trainer = Trainer(model=model, args=args_for(tmp_path, per_device_train_batch_size=8, num_train_epochs=3),
                      train_dataset=make_data(40, labels=False), eval_dataset=make_data(40, labels=False),
                      data_collator=collator)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.1


def test_language_model_collator_masks_padding_and_pads_on_the_tokenizer_side():
    class Tok:
        pad_token_id, padding_side = 0, "left"
    batch = DataCollatorForLanguageModeling(Tok(), mlm=False)([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, -100, 8]]
    with pytest.raises(ValueError, match="mask token"):
        DataCollatorForLanguageModeling(Tok())  # mlm=True by default, as in the reference: needs a mask token


def run(cmd, output_dir, **env):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=HERE,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), **env})


def final_weights(folder):
    return load_file(folder / "result" / "model.safetensors")


def test_causal_lm_resumes_exactly_after_sigkill(tmp_path):
    child = [sys.executable, str(HERE / "trainer_child.py")]
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = run([*child, str(full), "full", "0"], full, TEST_MODEL="llama-clm")
    assert done.returncode == 0, done.stderr[-3000:]
    died = run([*child, str(killed), "kill_after_save", "4"], killed, TEST_MODEL="llama-clm")
    assert died.returncode == -9, died.stderr[-3000:]
    resumed = run([*child, str(killed), "resume", "0"], killed, TEST_MODEL="llama-clm")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(full), final_weights(killed)
    assert a.keys() == b.keys() and "lm_head.weight" not in a  # tied: saved once, as the reference does
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kind", ["llama-clm", "gpt2-cls"])
def test_two_torchrun_workers_equal_one_process(kind, tmp_path):
    if not TORCHRUN.exists():
        pytest.skip("torchrun not found beside the interpreter")
    one, two = tmp_path / "one", tmp_path / "two"
    single = run([sys.executable, str(HERE / "ddp_child.py"), str(one), "32"], one, TEST_MODEL=kind)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(HERE / "ddp_child.py"), str(two), "16"],
              two, TEST_MODEL=kind)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = final_weights(one), final_weights(two)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    losses = [{e["step"]: e["loss"] for e in json.loads((f / "result" / "log_history.json").read_text())
               if "loss" in e} for f in (one, two)]
    assert losses[0].keys() == losses[1].keys()
    for step in losses[0]:
        assert losses[1][step] == pytest.approx(losses[0][step], abs=1e-4)
    evals = [json.loads((f / "result" / "eval.json").read_text())["eval_loss"] for f in (one, two)]
    assert evals[1] == pytest.approx(evals[0], abs=1e-5)


def test_tied_language_model_equals_a_plain_pytorch_loop(tmp_path):
    """The embedding tied to the LM head gets a gradient on every row: the Trainer's step must stay the dense one."""
    from tuneforge.data import shuffled_batches
    from tuneforge.training.optim import create_optimizer
    from tuneforge.training.schedules import create_scheduler
    data = make_data(24, labels=False)
    model, collator = make_model("llama-clm", dropout=False)
    by_hand, _ = make_model("llama-clm", dropout=False)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    args = args_for(tmp_path, per_device_train_batch_size=8, max_steps=3)
    Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    optimizer, collate = create_optimizer(by_hand, args), DataCollatorForLanguageModeling(mlm=False)
    scheduler = create_scheduler(optimizer, args, 3)
    for rows in shuffled_batches(24, 8, 42, 0):
        by_hand(**collate([data[i] for i in rows])).loss.backward()
        torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    for (key, ours), theirs in zip(model.state_dict().items(), by_hand.state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-5, msg=key)


def test_a_bf16_checkpoint_loads_as_saved_trains_and_saves_its_dtype(tmp_path):
    """from_pretrained's default dtype is the checkpoint's ("auto", as the reference's): a bfloat16 folder loads in
    bfloat16 (its rotary frequencies stay float32) and trains with the default fused AdamW and clipping; loaded as
    float32, trained and saved, its config says float32, so it loads back unrounded here and in the reference."""
    from tuneforge import AutoModelForCausalLM
    transformers = pytest.importorskip("transformers")
    model, collator = make_model("llama-clm", dropout=False)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    rotary = next(m for m in loaded.modules() if hasattr(m, "inv_freq"))
    fresh = next(m for m in make_model("llama-clm")[0].modules() if hasattr(m, "inv_freq"))
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, fresh.inv_freq)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    Trainer(model=loaded, args=args_for(tmp_path, per_device_train_batch_size=4, max_steps=2, max_grad_norm=1e-3),
            train_dataset=make_data(8, labels=False), data_collator=collator).train()
    assert any(not torch.equal(v, loaded.state_dict()[k]) for k, v in before.items())
    wide = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    with torch.no_grad():
        wide.lm_head.weight.add_(1e-4)  # not representable in bfloat16
    wide.save_pretrained(tmp_path / "fp32")
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
    for back in (AutoModelForCausalLM.from_pretrained(tmp_path / "fp32"),
                 transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fp32")):
        assert torch.equal(back.lm_head.weight, wide.lm_head.weight)
