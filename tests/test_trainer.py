"""Trainer and TrainingArguments: the guide's flow, exact resume, accumulation, callbacks and bad input."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tuneforge import (EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, metrics)
from tuneforge.models.bert import BertConfig, BertForSequenceClassification
from trainer_child import make_data

HERE = Path(__file__).parent


def tiny_model(num_labels=3, dropout=0.0, seed=0, vocab_size=99):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification.from_config(config)


def args_for(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), disable_tqdm=True, save_strategy="no", learning_rate=1e-3)
    values.update(overrides)
    return TrainingArguments(**values)


# ------------------------------------------------------------------------------------------ the maths


def test_accumulation_of_k_batches_equals_one_big_batch(tmp_path):
    data = make_data(48)
    weights = []
    for batch, accum in ((12, 1), (4, 3), (3, 4)):
        model = tiny_model()
        args = args_for(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_steps=4)
        Trainer(model=model, args=args, train_dataset=data).train()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for other in weights[1:]:
        for key in weights[0]:
            torch.testing.assert_close(other[key], weights[0][key], atol=2e-6, rtol=1e-5, msg=key)


def test_uneven_last_window_is_normalised_over_its_own_examples(tmp_path):
    """10 examples, batch 4, accumulation 2: the second window holds one batch of 2; its loss is that batch's mean."""
    data = make_data(10)
    model = tiny_model()
    args = args_for(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=1,
                    logging_steps=1, learning_rate=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2
    from tuneforge.data import DataCollatorWithPadding, shuffled_batches
    order = shuffled_batches(10, 4, 42, 0)
    collate = DataCollatorWithPadding()
    rename = lambda r: {k: v for k, v in r.items()}  # noqa: E731
    with torch.no_grad():
        model.eval()
        first = collate([rename(data[i]) for b in order[:2] for i in b])
        last = collate([rename(data[i]) for i in order[2]])
        assert losses[0] == pytest.approx(model(**first).loss.item(), abs=1e-4)
        assert losses[1] == pytest.approx(model(**last).loss.item(), abs=1e-4)


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch"])
def test_step_equals_a_plain_pytorch_loop_with_clipping(tmp_path, optim):
    """Forward, backward, clip_grad_norm_, AdamW, schedule, written out by hand; the clip is tight so it acts on
    every step (the fused optimizer applies it inside its own pass)."""
    from tuneforge.data import DataCollatorWithPadding, shuffled_batches
    from tuneforge.training.optim import create_optimizer
    from tuneforge.training.schedules import create_scheduler
    data = make_data(24)
    model = tiny_model()
    by_hand = tiny_model()
    args = args_for(tmp_path, per_device_train_batch_size=8, max_steps=3, max_grad_norm=0.05, optim=optim,
                    logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()

    optimizer = create_optimizer(by_hand, args)
    scheduler = create_scheduler(optimizer, args, 3)
    collate, norms = DataCollatorWithPadding(), []
    for batch in shuffled_batches(24, 8, 42, 0):
        by_hand(**collate([data[i] for i in batch])).loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.05)))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    assert min(norms) > 0.05 * 2  # clipping acted on every step
    logged = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    assert logged == pytest.approx(norms, rel=1e-4)
    for (key, ours), theirs in zip(model.state_dict().items(), by_hand.state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("vocab, accumulation", [(1000, 1), (240, 1), (1000, 2)])
def test_embedding_rows_equal_the_dense_step_and_resume_exactly(tmp_path, vocab, accumulation):
    """With sparse word-embedding gradients, the fused AdamW updates only the rows that ever had a gradient (exact
    without weight decay): the weights equal a plain dense PyTorch loop's, the checkpoint holds the standard dense
    moments, and a run resumed from it ends exactly where the uninterrupted run does. The data's ids are below 99:
    with 1,000 rows the sparse step holds throughout; with 240 the dense step takes over mid-run, past 60 rows.
    Accumulating two batches of 4 (sparse gradients add up) equals the batches of 8 of the loop."""
    from tuneforge.data import DataCollatorWithPadding, shuffled_batches
    from tuneforge.training.optim import EmbeddingRows, create_optimizer
    from tuneforge.training.schedules import create_scheduler
    big_vocab = lambda: tiny_model(vocab_size=vocab)  # noqa: E731
    data = make_data(48)
    args = args_for(tmp_path, per_device_train_batch_size=8 // accumulation, max_steps=6, max_grad_norm=0.05,
                    gradient_accumulation_steps=accumulation, save_strategy="steps", save_steps=3)
    model = big_vocab()
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    rows, order = trainer._embedding_rows, shuffled_batches(48, 8, 42, 0)
    assert rows is not None and not model.get_input_embeddings().sparse
    first_batch_ids = {i for row in order[0] for i in data[row]["input_ids"]}
    assert len(first_batch_ids) <= vocab // 4 < rows.count if vocab == 240 else 0 < rows.count <= vocab // 4
    decayed = args_for(tmp_path, weight_decay=0.01)  # decay moves every row: the dense step, always
    other = big_vocab()
    assert EmbeddingRows.attach(create_optimizer(other, decayed), other) is None

    by_hand = big_vocab()
    optimizer = create_optimizer(by_hand, args)
    scheduler = create_scheduler(optimizer, args, 6)
    collate = DataCollatorWithPadding()
    for batch in order:
        by_hand(**collate([data[i] for i in batch])).loss.backward()
        torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.05)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    for (key, ours), theirs in zip(model.state_dict().items(), by_hand.state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-5, msg=key)
    embedding = model.get_input_embeddings().weight
    want = optimizer.state[by_hand.get_input_embeddings().weight]
    for key in ("exp_avg", "exp_avg_sq"):  # back in the optimizer's state after training
        torch.testing.assert_close(trainer.optimizer.state[embedding][key], want[key], atol=1e-8, rtol=1e-5)

    saved = torch.load(tmp_path / "out" / "checkpoint-3" / "optimizer.pt", weights_only=True)["state"]
    assert any(s["exp_avg"].shape == (vocab, 32) and s["exp_avg"].any() for s in saved.values())
    resumed_model = big_vocab()
    Trainer(model=resumed_model, args=args, train_dataset=data).train(
        resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    for (key, ours), theirs in zip(resumed_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(ours, theirs), key


def test_embedding_rows_leave_a_standard_optimizer_at_any_moment(tmp_path):
    """A state dict taken before the first step loads; stopping between backward and step leaves a dense gradient
    that the optimizer's own step takes."""
    from tuneforge.data import DataCollatorWithPadding
    from tuneforge.training.optim import EmbeddingRows, create_optimizer
    model = tiny_model(vocab_size=1000)
    optimizer = create_optimizer(model, args_for(tmp_path))
    rows = EmbeddingRows.attach(optimizer, model)
    rows.begin()
    optimizer.load_state_dict(optimizer.state_dict())
    model(**DataCollatorWithPadding()(make_data(8))).loss.backward()
    weight = model.get_input_embeddings().weight
    assert weight.grad.is_sparse
    rows.end()
    assert not weight.grad.is_sparse and not model.get_input_embeddings().sparse
    before = weight.detach().clone()
    optimizer.step()
    assert not torch.equal(weight, before)


def private_kb(path: Path) -> int:
    """kB of this process's mappings of path that are its own copies (written, or populated writable)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split()[0].endswith(":"):  # a mapping's first line: address range, permissions, ..., path
            inside = line.endswith(str(path))
        elif inside and line.startswith("Anonymous:"):
            total += int(line.split()[1])
    return total


def populate_write_works() -> bool:
    """madvise(MADV_POPULATE_WRITE) exists here (Linux 5.14+)."""
    import ctypes
    import mmap
    if not Path("/proc/self/smaps").exists():
        return False
    region = mmap.mmap(-1, 4 * mmap.PAGESIZE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    return ctypes.CDLL(None).madvise(ctypes.c_void_p(address), ctypes.c_size_t(len(region)), 23) == 0


@pytest.mark.skipif(not populate_write_works(), reason="needs Linux 5.14's madvise(MADV_POPULATE_WRITE)")
def test_loaded_weights_are_made_writable_before_the_first_step(tmp_path, monkeypatch):
    """from_pretrained's weights are the checkpoint file's private mapping. Before the first step the trainer
    populates the trainable ones writable, one call per tensor, and their values stay the file's; the word
    embedding, whose rows the sparse step writes a few at a time, stays mapped from the file."""
    import tuneforge.training.trainer as trainer_module
    tiny_model(vocab_size=4000).save_pretrained(tmp_path / "saved")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "saved")
    file = (tmp_path / "saved" / "model.safetensors").resolve()
    values = {k: v.clone() for k, v in model.state_dict().items()}
    embedding = model.get_input_embeddings().weight
    others = [p for p in model.parameters() if p is not embedding]
    assert private_kb(file) < 8  # nothing copied yet
    seen, real = [], trainer_module.prefault_for_writing

    def populate(tensors):
        tensors = list(tensors)
        seen.extend(tensors)
        real(tensors)
        copied = private_kb(file)
        assert copied >= sum(p.numel() * 4 for p in others) // 1024  # every trainable weight, before any write
        assert copied < embedding.numel() * 4 // 1024  # not the embedding's 500 kB
        for key, value in model.state_dict().items():
            assert torch.equal(value, values[key]), key

    monkeypatch.setattr(trainer_module, "prefault_for_writing", populate)
    trainer = Trainer(model=model, args=args_for(tmp_path, max_steps=1), train_dataset=make_data(8))
    trainer.train()
    assert trainer._embedding_rows is not None
    assert {id(p) for p in seen} == {id(p) for p in others}


def test_weight_decay_skips_biases_and_norms():
    from tuneforge.training.optim import decay_parameter_names
    names = decay_parameter_names(tiny_model())
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert "classifier.weight" in names
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in names)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_schedules_match_reference(kind):
    transformers = pytest.importorskip("transformers")
    from tuneforge.training.schedules import lr_lambda
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = transformers.get_scheduler(kind, opt, num_warmup_steps=3, num_training_steps=20)
    ours = lr_lambda(kind, 3, 20)
    for step in range(21):
        assert ours(step) == pytest.approx(ref.lr_lambdas[0](step), abs=1e-9), step


# --------------------------------------------------------------------------------------- exact resume


def run_child(output_dir, mode, step):
    return subprocess.run([sys.executable, str(HERE / "trainer_child.py"), str(output_dir), mode, str(step)],
                          capture_output=True, text=True, timeout=600, cwd=HERE)


def losses_by_step(folder):
    history = json.loads((folder / "result" / "log_history.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = run_child(folder, "full", 0)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.parametrize("mode,step,resumes_from", [("kill_after_save", 4, 4), ("kill_while_saving", 8, 4)])
def test_resume_after_sigkill_is_exact(uninterrupted, tmp_path, mode, step, resumes_from):
    killed = run_child(tmp_path, mode, step)
    assert killed.returncode == -9, killed.stderr  # really killed
    complete = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert complete == [f"checkpoint-{s}" for s in range(4, step + 1, 4) if s != step or mode == "kill_after_save"]
    resumed = run_child(tmp_path, "resume", 0)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = losses_by_step(uninterrupted), losses_by_step(tmp_path)
    assert set(got) == set(expected) == set(range(1, 13))
    for s in range(resumes_from + 1, 13):
        assert got[s] == expected[s], f"step {s}"
    a = load_file(uninterrupted / "result" / "model.safetensors")
    b = load_file(tmp_path / "result" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not list(tmp_path.glob(".tmp-checkpoint-*")), "the half-written checkpoint is cleaned up"


def test_checkpoint_folder_contents(tmp_path):
    args = args_for(tmp_path, per_device_train_batch_size=8, max_steps=3, save_strategy="steps", save_steps=2)
    Trainer(model=tiny_model(), args=args, train_dataset=make_data(40)).train()
    folder = tmp_path / "out" / "checkpoint-2"
    for name in ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                 "trainer_state.json", "training_args.json"):
        assert (folder / name).is_file(), name
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.load(folder / name, weights_only=True)
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["max_steps"] == 3
    assert (tmp_path / "out" / "checkpoint-3").is_dir(), "the last step is saved too"


# ------------------------------------------------------------------------------ datasets and outputs


class PlainModule(torch.nn.Module):
    """Not one of ours: any module whose forward returns a loss trains."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y), "logits": self.linear(x)}


class TorchDataset(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def test_any_module_returning_a_loss_trains(tmp_path):
    model = PlainModule()
    args = args_for(tmp_path, per_device_train_batch_size=8, num_train_epochs=30, learning_rate=0.05,
                    lr_scheduler_type="constant", logging_strategy="epoch")
    trainer = Trainer(model=model, args=args, train_dataset=TorchDataset())
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0] / 20
    assert result.training_loss == pytest.approx(np.mean([e for e in losses]), rel=0.05)


def test_hf_dataset_columns_dropped_for_the_model_but_kept_for_the_user(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = make_data(24)
    ds = datasets.Dataset.from_list([{**r, "text": f"row {i}"} for i, r in enumerate(rows)])
    args = args_for(tmp_path, per_device_train_batch_size=8, max_steps=2)
    Trainer(model=tiny_model(), args=args, train_dataset=ds, eval_dataset=ds).train()
    assert ds.column_names == ["input_ids", "attention_mask", "label", "text"]


def test_evaluate_and_predict(tmp_path):
    data = make_data(30)
    model = tiny_model()
    accuracy = metrics.load("accuracy")

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return accuracy.compute(predictions=logits.argmax(-1), references=labels)

    args = args_for(tmp_path, per_device_eval_batch_size=4)
    trainer = Trainer(model=model, args=args, eval_dataset=data, compute_metrics=compute_metrics)
    result = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_runtime", "eval_samples_per_second"} <= result.keys()
    out = trainer.predict(data)
    # Batches run sorted by length; predictions come back in the input order.
    model.eval()
    with torch.no_grad():
        for i, row in enumerate(data):
            logits = model(torch.tensor([row["input_ids"]])).logits[0].numpy()
            np.testing.assert_allclose(out.predictions[i], logits, atol=1e-5)
    np.testing.assert_array_equal(out.label_ids, [r["label"] for r in data])
    expected = float(np.mean(out.predictions.argmax(-1) == out.label_ids))
    assert out.metrics["test_accuracy"] == pytest.approx(expected)
    assert result["eval_accuracy"] == pytest.approx(expected)


# ---------------------------------------------------------------------------- cadence and callbacks


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, args, state, control, **kwargs):
        assert "model" in kwargs and "optimizer" in kwargs
        self.events.append("train_begin")

    def on_epoch_end(self, args, state, control, **kwargs):
        self.events.append(f"epoch_end@{state.global_step}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(f"evaluate@{state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        self.events.append(f"save@{state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("train_end")


def test_epoch_cadence_and_callback_hooks(tmp_path):
    data = make_data(32)
    recorder = Recorder()
    args = args_for(tmp_path, per_device_train_batch_size=8, num_train_epochs=2, eval_strategy="epoch",
                    save_strategy="epoch")
    Trainer(model=tiny_model(), args=args, train_dataset=data, eval_dataset=data, callbacks=[recorder]).train()
    assert recorder.events == ["train_begin", "epoch_end@4", "evaluate@4", "save@4", "epoch_end@8", "evaluate@8",
                               "save@8", "train_end"]
    lines = (tmp_path / "out" / "log.jsonl").read_text().splitlines()
    assert sum("eval_loss" in json.loads(line) for line in lines) == 2


class StopAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            control.should_training_stop = True


def test_callback_can_stop_training(tmp_path):
    trainer = Trainer(model=tiny_model(), args=args_for(tmp_path, per_device_train_batch_size=4, max_steps=10),
                      train_dataset=make_data(40), callbacks=[StopAt()])
    assert trainer.train().global_step == 3


def test_early_stopping(tmp_path):
    data = make_data(16)
    args = args_for(tmp_path, per_device_train_batch_size=8, num_train_epochs=20, eval_strategy="epoch",
                    learning_rate=0.0, metric_for_best_model="loss")
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=data, eval_dataset=data,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=2)])
    # With lr 0 the loss never improves: stop after the first evaluation plus two without improvement.
    assert trainer.train().global_step == 3 * 2


class WorsenAfter(TrainerCallback):
    """Makes evaluation 2 the best: from then on the eval loss rises."""


def test_save_total_limit_keeps_best_and_load_best_model_at_end(tmp_path):
    data = make_data(32)
    accuracy_by_step = {}

    def compute_metrics(eval_pred):
        # A metric that peaks at the second evaluation, whatever the model does.
        step = len(accuracy_by_step) + 1
        accuracy_by_step[step] = {1: 0.5, 2: 0.9}.get(step, 0.6)
        return {"score": accuracy_by_step[step]}

    args = args_for(tmp_path, per_device_train_batch_size=8, max_steps=12, eval_strategy="steps", eval_steps=2,
                    save_strategy="steps", save_steps=2, save_total_limit=1, load_best_model_at_end=True,
                    metric_for_best_model="score")
    model = tiny_model()
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, compute_metrics=compute_metrics)
    trainer.train()
    kept = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert kept == ["checkpoint-12", "checkpoint-4"]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    best = load_file(tmp_path / "out" / "checkpoint-4" / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("mutate,message", [
    (lambda rows: rows[5].update(label=3), r"train_dataset column 'label' row 5: label 3 is outside \[0, 3\)"),
    (lambda rows: rows[2].update(label=-1), r"row 2: label -1 is outside"),
    (lambda rows: rows[0].update(label="positive"), r"row 0: label 'positive' is not a class id"),
    (lambda rows: [r.pop("label") for r in rows], r"train_dataset has no label column \('label' or 'labels'\)"),
    (lambda rows: rows.clear(), r"train_dataset is empty"),
])
def test_bad_training_data_fails_before_the_first_step(tmp_path, mutate, message):
    rows = make_data(20)
    mutate(rows)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        Trainer(model=model, args=args_for(tmp_path, max_steps=2), train_dataset=rows).train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_untokenized_dataset_is_named(tmp_path):
    rows = [{"text": "hello", "label": 0}] * 4
    with pytest.raises(ValueError, match="train_dataset has no column the model takes.*tokenize it first"):
        Trainer(model=tiny_model(), args=args_for(tmp_path, max_steps=1), train_dataset=rows).train()


def test_accumulation_larger_than_the_epoch(tmp_path):
    args = args_for(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=8)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=8 is larger than the 3 batches"):
        Trainer(model=tiny_model(), args=args, train_dataset=make_data(20)).train()


def test_nan_loss_stops_with_the_step(tmp_path):
    class NanAtStep3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.calls = 0

        def forward(self, x, y):
            self.calls += 1
            loss = ((self.w * x.sum(-1) - y) ** 2).mean()
            return {"loss": loss * float("nan") if self.calls == 3 else loss}

    args = args_for(tmp_path, per_device_train_batch_size=8, max_steps=10)
    with pytest.raises(FloatingPointError, match="training loss is nan at step 3"):
        Trainer(model=NanAtStep3(), args=args, train_dataset=TorchDataset()).train()


@pytest.mark.parametrize("kwargs,message", [
    (dict(eval_strategy="epochs"), "eval_strategy='epochs' is not supported; use one of no, steps, epoch"),
    (dict(load_best_model_at_end=True), "load_best_model_at_end=True needs evaluations"),
    (dict(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="steps"),
     "needs save_strategy equal to eval_strategy"),
    (dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=30, save_steps=50),
     r"save_steps \(50\) to be a multiple of eval_steps \(30\)"),
    (dict(lr_scheduler_type="greedy"), "lr_scheduler_type greedy requires an eval strategy"),
    (dict(per_device_train_batch_size=0), "per_device_train_batch_size must be at least 1"),
    (dict(num_train_epochs=0), "num_train_epochs=0 trains nothing"),
    (dict(warmup_ratio=1.5), r"warmup_ratio must be in \[0, 1\]"),
])
def test_inconsistent_arguments_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(output_dir="x", **kwargs)


def test_eval_strategy_without_eval_dataset(tmp_path):
    with pytest.raises(ValueError, match="eval_strategy='epoch' needs an eval_dataset"):
        Trainer(model=tiny_model(), args=args_for(tmp_path, eval_strategy="epoch"), train_dataset=make_data(8)).train()


def test_hub_token_never_saved_or_shown(tmp_path):
    secret = "hf_SECRETtokenVALUE123"
    args = args_for(tmp_path, hub_token=secret, max_steps=2, save_strategy="steps", save_steps=1)
    assert secret not in repr(args) and secret not in json.dumps(args.to_dict())
    Trainer(model=tiny_model(), args=args, train_dataset=make_data(16)).train()
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_defaults_follow_the_reference():
    transformers = pytest.importorskip("transformers")
    ours, ref = TrainingArguments(output_dir="x"), transformers.TrainingArguments(output_dir="x")
    for name in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "max_steps",
                 "logging_steps", "save_steps", "gradient_accumulation_steps", "warmup_steps"):
        assert getattr(ours, name) == getattr(ref, name), name
    for name in ("eval_strategy", "save_strategy", "logging_strategy", "lr_scheduler_type", "hub_strategy", "optim"):
        assert getattr(ours, name) == getattr(getattr(ref, name), "value", getattr(ref, name)), name


class WideOutputs(torch.nn.Module):
    """Logits plus a large per-example output that compute_metrics never needs."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x, labels):
        logits = self.linear(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits,
                "hidden": torch.randn(len(x), 2000)}


def test_evaluation_keeps_the_outputs_the_reference_keeps_and_no_more(tmp_path):
    """predictions are every output but the loss (a tuple when there are several), as the reference's; with
    ignore_keys naming the wide one, the host holds only the logits and labels."""
    import tracemalloc
    g = torch.Generator().manual_seed(0)
    rows = [{"x": torch.randn(4, generator=g), "labels": i % 3} for i in range(3000)]
    shapes = []
    trainer = Trainer(model=WideOutputs(), args=args_for(tmp_path, per_device_eval_batch_size=100),
                      compute_metrics=lambda p: shapes.append([v.shape for v in p.predictions]) or {})
    trainer.evaluate(rows[:30])
    assert shapes == [[(30, 3), (30, 2000)]]
    trainer.compute_metrics = lambda p: {"n": len(p.predictions), "width": p.predictions.shape[1]}
    tracemalloc.start()
    metrics = trainer.evaluate(rows, ignore_keys=["hidden"])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert metrics["eval_n"] == 3000 and metrics["eval_width"] == 3
    # 3,000 x 2,000 floats of "hidden" would be 24 MB on the host side; the logits and labels are a few kB.
    assert peak < 5e6, peak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_training_reuses_freed_memory_and_gives_it_back(tmp_path):
    """During training and evaluation a large freed buffer stays in the process for the next step (no fresh mmap,
    whose page faults cost about a tenth of a step); the kept memory goes back to the OS when they end, not when an
    evaluation during training ends."""
    import ctypes
    import os
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def mmapped_while_holding(nbytes: int) -> int:
        before = libc.mallinfo2().hblkhd
        buffer = torch.ones(nbytes // 4)
        grown = libc.mallinfo2().hblkhd - before
        del buffer
        return grown

    mmapped, kept = [], []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            mmapped.append(mmapped_while_holding(64 * 2**20))  # a word-embedding gradient's size
            kept.append(resident())

        on_prediction_step = on_step_end

    args = args_for(tmp_path, per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=3,
                    eval_strategy="steps", eval_steps=1)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=make_data(24), eval_dataset=make_data(8),
                      callbacks=[Probe()])
    trainer.train()
    assert mmapped == [0] * 6  # each step, then its evaluation: still kept for the next step
    assert resident() < kept[-1] - 48 * 2**20, "the kept 64 MB are returned when training ends"
    mmapped.clear()
    kept.clear()
    trainer.evaluate()
    assert mmapped == [0]
    assert resident() < kept[-1] - 48 * 2**20, "and when evaluation ends"


def test_torch_compile_compiles_once_for_batches_of_every_length(tmp_path):
    """Packing and the per-length attention groups stay out of the graph: batches with new lengths and group
    structures reuse the compiled code instead of compiling again (which took a minute per step)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    graphs = []

    class CountGraphs(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            graphs.append(counters["stats"]["unique_graphs"])

    data = make_data(32)
    assert len({len(r["input_ids"]) for r in data}) > 4, "batches must differ in lengths for this to mean anything"
    weights = []
    for compiled in (True, False):
        model = tiny_model()
        args = args_for(tmp_path, per_device_train_batch_size=4, max_steps=8, torch_compile=compiled)
        Trainer(model=model, args=args, train_dataset=data, callbacks=[CountGraphs()] if compiled else []).train()
        weights.append(model.state_dict())
    assert graphs[0] > 0, "the model was compiled"
    assert graphs[-1] == graphs[1], f"graphs compiled after each step: {graphs}"
    for key in weights[1]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-5, rtol=1e-4, msg=key)
