"""The Trainer's customisation points and callbacks: the loop calls each override, at the reference's moments, with
the reference's arguments; the fast paths stay exact when nothing is overridden."""
import json

import pytest
import torch
from torch import nn

from tuneforge import Trainer, TrainerCallback, TrainingArguments
from tuneforge.models.bert import BertConfig, BertForSequenceClassification
from trainer_child import make_data

HOOKS = ("on_init_end", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_step_begin",
         "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end", "on_evaluate", "on_predict",
         "on_save", "on_log", "on_prediction_step")
CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification.from_config(BertConfig(**CONFIG))


def pad(rows):
    """One collator for both libraries: pads to the longest row."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([r["attention_mask"] + [0] * (width - len(r["attention_mask"])) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["label"] if "label" in r else r["labels"] for r in rows])}


def args_for(tmp_path, module=None, **overrides):
    module = module or __import__("tuneforge")
    values = dict(output_dir=str(tmp_path / "out"), disable_tqdm=True, save_strategy="no", learning_rate=1e-3,
                  report_to="none", per_device_train_batch_size=2, per_device_eval_batch_size=2)
    values.update(overrides)
    return module.TrainingArguments(**values)


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name in HOOKS:
            return lambda args, state, control, **kw: self.events.append((name, state.global_step, sorted(kw)))
        return object.__getattribute__(self, name)


def test_callbacks_fire_as_the_references_do(tmp_path):
    """Same events, in the same order, at the same steps, with the reference's keyword arguments."""
    transformers = pytest.importorskip("transformers")
    recorded = {}
    for name, module, model in (
            ("ours", __import__("tuneforge"), tiny_model()),
            ("reference", transformers, transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)))):
        recorder = Recorder()
        args = args_for(tmp_path / name, module, gradient_accumulation_steps=2, eval_strategy="epoch",
                        logging_steps=2, save_strategy="steps", save_steps=3, num_train_epochs=1)
        trainer = module.Trainer(model=model, args=args, train_dataset=make_data(12), eval_dataset=make_data(4, 1),
                                 data_collator=pad, callbacks=[recorder])
        trainer.train()
        trainer.predict(make_data(4, 2))
        recorded[name] = recorder.events
    ours, ref = recorded["ours"], recorded["reference"]
    assert [(e, s) for e, s, _ in ours] == [(e, s) for e, s, _ in ref]
    for (event, _, ours_kw), (_, _, ref_kw) in zip(ours, ref):
        assert set(ref_kw) - {"trial"} <= set(ours_kw), event  # the reference's keyword arguments, at least


class Overriding(Trainer):
    """Every documented customisation point, recording its calls and deferring to the default."""

    def __init__(self, *a, **kw):
        self.calls = []
        super().__init__(*a, **kw)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.calls.append(("compute_loss", model.training, return_outputs,
                           None if num_items_in_batch is None else int(num_items_in_batch)))
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        weight = torch.tensor([1.0, 2.0, 3.0])  # the docs' weighted loss: evaluation must report it too
        loss = nn.functional.cross_entropy(outputs["logits"], labels, weight=weight)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.calls.append(("training_step", len(inputs["labels"]), int(num_items_in_batch)))
        return super().training_step(model, inputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        self.calls.append(("create_optimizer",))
        if self.optimizer is None:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.args.learning_rate)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        self.calls.append(("create_scheduler", num_training_steps, optimizer))
        return super().create_scheduler(num_training_steps, optimizer)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self.calls.append(("prediction_step", prediction_loss_only, ignore_keys))
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def get_eval_dataloader(self, eval_dataset=None):
        self.calls.append(("get_eval_dataloader",))
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=pad)

    def get_test_dataloader(self, test_dataset):
        self.calls.append(("get_test_dataloader",))
        return torch.utils.data.DataLoader(test_dataset, batch_size=3, collate_fn=pad)

    def log(self, logs, start_time=None):
        self.calls.append(("log", sorted(logs)))
        super().log(logs, start_time)


def test_every_customisation_point_is_called_where_the_reference_calls_it(tmp_path):
    eval_rows = make_data(7, 1)
    trainer = Overriding(model=tiny_model(), args=args_for(tmp_path, gradient_accumulation_steps=2, max_steps=2,
                                                           logging_steps=1, eval_strategy="steps", eval_steps=2),
                         train_dataset=make_data(8), eval_dataset=eval_rows, data_collator=pad)
    trainer.train()
    calls = trainer.calls
    names = [c[0] for c in calls]
    assert names.count("create_optimizer") == 1 and isinstance(trainer.optimizer, torch.optim.SGD)
    assert ("create_scheduler", 2, None) in calls  # the reference's loop passes no optimizer (self.optimizer)
    assert names.index("create_optimizer") < names.index("create_scheduler")
    assert isinstance(trainer.lr_scheduler.optimizer, torch.optim.SGD)
    steps = [c for c in calls if c[0] == "training_step"]
    assert steps == [("training_step", 2, 4)] * 4  # per micro-batch, with the window's examples
    train_losses = [c for c in calls if c[0] == "compute_loss" and c[1]]
    assert train_losses == [("compute_loss", True, False, 4)] * 4
    # Evaluation: 7 rows in the overridden loader's batches of 3, each through prediction_step and compute_loss.
    assert names.count("get_eval_dataloader") == 1
    assert [c for c in calls if c[0] == "prediction_step"] == [("prediction_step", True, None)] * 3
    assert [c for c in calls if c[0] == "compute_loss" and not c[1]] == [("compute_loss", False, True, None)] * 3
    eval_log = next(e for e in trainer.state.log_history if "eval_loss" in e)
    model = trainer.model.eval()
    with torch.no_grad():
        batch = pad(eval_rows)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
    # The weighted loss, averaged over batches by examples (the reference averages batch means too).
    per_batch = [nn.functional.cross_entropy(logits[i:i + 3], batch["labels"][i:i + 3],
                                             weight=torch.tensor([1.0, 2.0, 3.0])) for i in (0, 3, 6)]
    expected = float(sum(loss * n for loss, n in zip(per_batch, (3, 3, 1))) / 7)
    assert eval_log["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert ("log", ["grad_norm", "learning_rate", "loss"]) in calls  # epoch is added inside log(), as there
    output = trainer.predict(make_data(5, 2))
    assert ("get_test_dataloader",) in calls and output.predictions.shape == (5, 3)
    assert [c for c in calls if c[0] == "prediction_step"][-1] == ("prediction_step", False, None)


def test_a_training_step_override_keeps_accumulation_exact(tmp_path):
    """The loop calls training_step per micro-batch; an override that adds to it (here: counting) changes nothing."""
    weights = []
    for cls, batch, accum in ((Trainer, 8, 1), (Overriding, 4, 2), (Overriding, 2, 4)):
        model = tiny_model()
        cls.compute_loss = Trainer.compute_loss if cls is Trainer else cls.compute_loss
        trainer = cls(model=model, args=args_for(tmp_path, per_device_train_batch_size=batch,
                                                 gradient_accumulation_steps=accum, max_steps=3, optim="sgd"),
                      train_dataset=make_data(24), data_collator=pad)
        if cls is Overriding:
            trainer.compute_loss = lambda m, i, return_outputs=False, num_items_in_batch=None: Trainer.compute_loss(
                trainer, m, i, return_outputs, num_items_in_batch)
        trainer.train()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for other in weights[1:]:
        for key in weights[0]:
            torch.testing.assert_close(other[key], weights[0][key], atol=2e-6, rtol=1e-5, msg=key)


def test_compute_loss_func_normalised_by_num_items_equals_the_big_batch(tmp_path):
    def summed(outputs, labels, num_items_in_batch=None):
        return nn.functional.cross_entropy(outputs["logits"], labels, reduction="sum") / num_items_in_batch

    weights = []
    for batch, accum, func in ((8, 1, None), (4, 2, summed), (2, 4, summed)):
        model = tiny_model()
        Trainer(model=model, args=args_for(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                                           max_steps=2), train_dataset=make_data(16), data_collator=pad,
                compute_loss_func=func).train()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for other in weights[1:]:
        for key in weights[0]:
            torch.testing.assert_close(other[key], weights[0][key], atol=2e-6, rtol=1e-5, msg=key)


def test_an_overridden_train_dataloader_is_what_the_loop_iterates(tmp_path):
    rows = make_data(10)
    seen = []

    class Custom(Trainer):
        def get_train_dataloader(self):
            def collate(batch):
                seen.append(len(batch))
                return pad(batch)
            return torch.utils.data.DataLoader(rows, batch_size=3, collate_fn=collate)

    trainer = Custom(model=tiny_model(), args=args_for(tmp_path, num_train_epochs=2, gradient_accumulation_steps=2),
                     train_dataset=rows)
    output = trainer.train()
    assert seen == [3, 3, 3, 1] * 2 and output.global_step == 4  # 2 windows an epoch: (3, 3) and (3, 1)


def test_eval_delay_tokens_seen_flops_and_metric_files(tmp_path):
    trainer = Trainer(model=tiny_model(), args=args_for(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=1,
                                                        eval_delay=3, include_num_input_tokens_seen="non_padding",
                                                        logging_steps=1, run_name="tiny-run"),
                      train_dataset=make_data(8), eval_dataset=make_data(4, 1), data_collator=pad)
    output = trainer.train()
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    assert evaluated == [3, 4]
    rows = make_data(8)
    assert trainer.state.num_input_tokens_seen == sum(len(r["input_ids"]) for r in rows)  # one epoch, no padding
    assert "num_input_tokens_seen" in trainer.state.log_history[0]
    lines = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert len(lines) == len(trainer.state.log_history) and {e["run_name"] for e in lines} == {"tiny-run"}
    first = trainer.state.log_history[0]  # log(logs, start_time), as the reference's step logs
    assert first["train_tokens_per_second"] > 0 and first["train_runtime"] > 0
    assert output.metrics["total_flos"] > 0 and trainer.state.total_flos == output.metrics["total_flos"]
    assert trainer.is_world_process_zero() and trainer.is_local_process_zero()
    trainer.log_metrics("train", output.metrics)
    trainer.save_metrics("train", output.metrics)
    trainer.save_metrics("eval", {"eval_loss": 1.0})
    out = tmp_path / "out"
    assert json.loads((out / "train_results.json").read_text())["total_flos"] == output.metrics["total_flos"]
    assert json.loads((out / "all_results.json").read_text())["eval_loss"] == 1.0
    trainer.create_model_card(model_name="tiny", finetuned_from="bert-tiny", dataset="sst2")
    card = (out / "README.md").read_text()
    assert "tiny" in card and "bert-tiny" in card


def test_missing_integration_fails_as_the_reference_and_trial_is_refused(tmp_path):
    """Every report_to integration whose package is missing fails at Trainer() with the reference's exception and
    message; "all" and "none" become the reference's lists."""
    import importlib.util
    import warnings
    transformers = pytest.importorskip("transformers")
    from tuneforge.training.arguments import INTEGRATIONS
    for name in [*INTEGRATIONS, "tensorboard"]:
        module = INTEGRATIONS.get(name, "tensorboard").split(".")[0]
        if importlib.util.find_spec(module) is not None or (name == "kubeflow") is not (
                "KUBEFLOW_TRAINER_SERVER_URL" not in __import__("os").environ):
            continue
        with pytest.raises(Exception) as theirs, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformers.Trainer(model=transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)),
                                 args=args_for(tmp_path, transformers, report_to=name))
        with pytest.raises(type(theirs.value)) as ours:
            Trainer(model=tiny_model(), args=args_for(tmp_path, report_to=name))
        assert str(ours.value) == str(theirs.value), name
    for value in ("all", "none", ["none"]):
        assert args_for(tmp_path, report_to=value).report_to == \
            args_for(tmp_path, transformers, report_to=value).report_to
    trainer = Trainer(model=tiny_model(), args=args_for(tmp_path), train_dataset=make_data(4), data_collator=pad)
    with pytest.raises(ValueError, match="trial"):
        trainer.train(trial={"lr": 1e-3})


def test_compute_loss_func_in_the_docs_style_also_evaluates(tmp_path):
    """A loss divided by num_items_in_batch (the docs' way): evaluation passes each batch's labelled items, as the
    reference does, so eval_loss is the mean over the eval set."""
    def summed(outputs, labels, num_items_in_batch=None):
        return nn.functional.cross_entropy(outputs["logits"], labels, reduction="sum") / num_items_in_batch

    rows = make_data(7, 1)
    trainer = Trainer(model=tiny_model(), args=args_for(tmp_path, per_device_eval_batch_size=3), eval_dataset=rows,
                      data_collator=pad, compute_loss_func=summed)
    loss = trainer.evaluate()["eval_loss"]
    batch = pad(rows)
    with torch.no_grad():
        logits = trainer.model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, batch["labels"])), rel=1e-5)


def test_label_names_columns_reach_a_custom_loss_as_in_the_reference(tmp_path):
    """label_names=["my_labels"]: the column is kept (the model does not take it), the custom compute_loss gets it,
    evaluation returns it as label_ids; training and evaluation equal the reference's."""
    transformers = pytest.importorskip("transformers")

    def rename(rows):
        return [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"], "my_labels": r["label"]}
                for r in rows]

    def collate(rows):
        batch = pad([{**r, "label": r["my_labels"]} for r in rows])
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "my_labels": batch.pop("labels")}

    results = {}
    for name, module in (("ours", __import__("tuneforge")), ("reference", transformers)):
        class OwnLoss(module.Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                labels = inputs.pop("my_labels")
                outputs = model(**inputs)
                loss = nn.functional.cross_entropy(outputs["logits"], labels)
                return (loss, outputs) if return_outputs else loss

        model = tiny_model()
        if module is transformers:
            weights = model.state_dict()
            model = transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG))
            model.load_state_dict(weights)
        seen = []
        trainer = OwnLoss(model=model, args=args_for(tmp_path / name, module, label_names=["my_labels"], max_steps=3,
                                                     optim="sgd", remove_unused_columns=False),
                          train_dataset=rename(make_data(6)), eval_dataset=rename(make_data(5, 1)),
                          data_collator=collate, compute_metrics=lambda p: seen.append(p.label_ids) or {})
        trainer.train()
        results[name] = trainer.evaluate()["eval_loss"], seen[0]
    assert results["ours"][0] == pytest.approx(results["reference"][0], rel=1e-5)
    assert results["ours"][1].tolist() == results["reference"][1].tolist() == [r["label"] for r in make_data(5, 1)]


def test_log_metrics_prints_as_the_reference(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    metrics = {"train_runtime": 3723.0612, "train_loss": 0.123456789, "total_flos": 3 * 2**30 + 5, "epoch": 2.0,
               "train_samples_per_second": 12.5}
    for module, model in ((__import__("tuneforge"), tiny_model()),
                          (transformers, transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)))):
        module.Trainer(model=model, args=args_for(tmp_path, module)).log_metrics("train", metrics)
    printed = capsys.readouterr().out.split("***** train metrics *****\n")
    assert printed[1] == printed[2] and "1:02:03.06" in printed[1]
