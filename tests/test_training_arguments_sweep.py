"""Every field and method of the reference's TrainingArguments: implemented (its behaviour tested here or in the
named test) or refused with a message naming it. None is silently ignored."""
import dataclasses
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tuneforge import HfArgumentParser, TrainingArguments  # noqa: E402
from tuneforge.training.arguments import REFUSED  # noqa: E402

REFERENCE = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}
OURS = {f.name: f for f in dataclasses.fields(TrainingArguments)}

# Implemented fields -> where their behaviour is tested (this file unless a test module is named).
IMPLEMENTED = {
    "output_dir": "test_trainer", "per_device_train_batch_size": "test_trainer", "num_train_epochs": "test_trainer",
    "max_steps": "test_trainer", "learning_rate": "test_trainer", "lr_scheduler_type": "test_trainer",
    "lr_scheduler_kwargs": "here", "warmup_steps": "test_trainer", "optim": "here", "weight_decay": "test_trainer",
    "adam_beta1": "test_trainer", "adam_beta2": "test_trainer", "adam_epsilon": "test_trainer",
    "gradient_accumulation_steps": "test_trainer", "average_tokens_across_devices": "test_trainer_hooks",
    "max_grad_norm": "test_trainer", "bf16": "test_trainer", "fp16": "here", "tf32": "here",
    "activation_checkpointing": "here", "activation_checkpointing_kwargs": "here",
    "gradient_checkpointing": "test_models", "gradient_checkpointing_kwargs": "here", "torch_compile": "test_trainer",
    "torch_compile_backend": "here", "torch_compile_mode": "here", "torch_empty_cache_steps": "here (CUDA only)",
    "logging_strategy": "test_trainer", "logging_steps": "test_trainer", "logging_first_step": "test_trainer",
    "log_on_each_node": "here", "include_num_input_tokens_seen": "test_trainer_hooks", "log_level": "here",
    "log_level_replica": "here", "disable_tqdm": "test_trainer", "report_to": "test_trainer_hooks",
    "run_name": "test_trainer_hooks (log.jsonl)",
    "eval_strategy": "test_trainer", "eval_steps": "test_trainer", "eval_delay": "test_trainer_hooks",
    "per_device_eval_batch_size": "test_trainer", "prediction_loss_only": "test_trainer",
    "eval_on_start": "test_trainer", "eval_accumulation_steps": "here (outputs go to host arrays every batch)",
    "save_only_model": "test_trainer", "save_strategy": "test_trainer", "save_steps": "test_trainer",
    "save_total_limit": "test_trainer", "push_to_hub": "test_hub_training", "hub_token": "test_hub_training",
    "hub_private_repo": "test_hub_training", "hub_model_id": "test_hub_training", "hub_strategy": "test_hub_training",
    "hub_always_push": "here (pushes are synchronous)", "load_best_model_at_end": "test_trainer",
    "metric_for_best_model": "test_trainer", "greater_is_better": "test_trainer", "full_determinism": "here",
    "seed": "test_trainer", "data_seed": "test_trainer", "use_cpu": "test_trainer",
    "dataloader_drop_last": "test_trainer", "dataloader_num_workers": "test_trainer",
    "dataloader_pin_memory": "here", "dataloader_persistent_workers": "here", "dataloader_prefetch_factor": "here",
    "dataloader_multiprocessing_context": "here", "remove_unused_columns": "test_trainer",
    "label_names": "test_trainer_hooks", "train_sampling_strategy": "here", "length_column_name": "test_trainer",
    "ddp_timeout": "test_distributed", "fsdp": "test_distributed", "do_train": "compat", "do_eval": "here",
    "do_predict": "compat", "resume_from_checkpoint": "compat", "local_rank": "here",
    "enable_jit_checkpoint": "test_preemption (save_on_preemption)",
}


def test_every_reference_field_is_implemented_or_refused():
    unaccounted = [n for n in REFERENCE if n not in IMPLEMENTED and n not in REFUSED]
    assert not unaccounted, f"reference fields neither implemented nor refused: {unaccounted}"
    assert not set(IMPLEMENTED) & set(REFUSED)
    missing = [n for n in REFERENCE if n not in OURS]
    assert not missing, f"reference fields TrainingArguments does not accept: {missing}"


@pytest.mark.parametrize("name", sorted(IMPLEMENTED))
def test_implemented_fields_have_the_reference_default(name):
    ref, ours = REFERENCE[name], OURS[name]
    default = lambda f: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # noqa: E731
    if name in ("output_dir", "fsdp", "gradient_checkpointing"):  # False where the reference has None (both off)
        return
    assert default(ours) == default(ref), f"{name}: {default(ours)!r} != the reference's {default(ref)!r}"


def _other_value(name, default):
    special = {"debug": "underflow_overflow", "include_for_metrics": ["inputs"], "project": "mine",
               "trackio_static_space_id": "x", "parallelism_config": object(), "accelerator_config": {"a": 1},
               "optim_target_modules": ["q"], "liger_kernel_config": {"rope": True}, "fsdp_config": {"a": 1}}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return not default
    if default is None:
        return "x"
    if isinstance(default, (int, float)):
        return default + 1
    return "other"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_fields_name_themselves_unless_left_at_their_default(name, tmp_path):
    TrainingArguments(output_dir=str(tmp_path), **{name: OURS[name].default if OURS[name].default is not
                                                   dataclasses.MISSING else OURS[name].default_factory()})
    default = OURS[name].default if OURS[name].default is not dataclasses.MISSING else OURS[name].default_factory()
    with pytest.raises(ValueError, match=f"^{name}=.*is not supported by tuneforge"):
        TrainingArguments(output_dir=str(tmp_path), **{name: _other_value(name, default)})


def test_reference_methods_and_properties_exist_and_work(tmp_path):
    ref_names = [m for m in dir(transformers.TrainingArguments) if not m.startswith("_") and m not in REFERENCE]
    args = TrainingArguments(output_dir=str(tmp_path))
    skip = {"is_torch_greater_or_equal_than_2_8"}  # the reference's own version probe
    missing = [m for m in ref_names if m not in skip and not hasattr(args, m)]
    assert not missing, f"reference methods TrainingArguments lacks: {missing}"
    assert args.device == torch.device("cpu") and args.n_gpu == 0 and args.world_size == 1
    assert args.process_index == 0 and args.local_process_index == 0 and args.should_log and args.should_save
    assert args.parallel_mode.value == transformers.TrainingArguments(str(tmp_path)).parallel_mode.value
    assert args.get_warmup_steps(100) == 0 and args.train_batch_size == 8 and args.eval_batch_size == 8
    assert args.ddp_timeout_delta.total_seconds() == 1800 and args.default_optim == "adamw_torch_fused"
    assert isinstance(args.to_sanitized_dict()["label_names"], str)
    with args.main_process_first(desc="tokenize"):
        pass
    args.set_training(learning_rate=1e-3, batch_size=4, num_epochs=2, gradient_accumulation_steps=2)
    assert (args.learning_rate, args.per_device_train_batch_size, args.num_train_epochs,
            args.gradient_accumulation_steps) == (1e-3, 4, 2, 2)
    args.set_evaluate(strategy="steps", steps=10, batch_size=16, delay=5)
    assert (args.eval_strategy, args.eval_steps, args.per_device_eval_batch_size, args.eval_delay, args.do_eval) == \
        ("steps", 10, 16, 5, True)
    args.set_save(strategy="steps", steps=20, total_limit=2)
    args.set_logging(strategy="steps", steps=5, level="info")
    assert args.logging_steps == 5 and args.get_process_log_level() == logging.INFO
    args.set_optimizer(name="sgd", learning_rate=0.1)
    args.set_lr_scheduler(name="cosine", warmup_steps=3)
    args.set_dataloader(train_batch_size=2, eval_batch_size=3, drop_last=True)
    args.set_testing(batch_size=5)
    assert (args.optim, args.lr_scheduler_type, args.per_device_train_batch_size, args.per_device_eval_batch_size,
            args.dataloader_drop_last) == ("sgd", "cosine", 2, 5, True)
    with pytest.raises(ValueError, match="hub_revision"):
        args.set_push_to_hub("me/model", revision="dev")
    assert args.set_push_to_hub("me/model").hub_model_id == "me/model"


def test_implemented_fields_act(tmp_path, monkeypatch):
    out = str(tmp_path)
    assert TrainingArguments(out, eval_strategy="epoch").do_eval  # as in the reference
    assert TrainingArguments(out, torch_compile_backend="eager").torch_compile
    assert TrainingArguments(out, torch_compile_mode="reduce-overhead").torch_compile
    args = TrainingArguments(out, activation_checkpointing=True, activation_checkpointing_kwargs='{"use_reentrant": '
                                                                                                 'false}')
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert TrainingArguments(out, lr_scheduler_kwargs='{"num_cycles": 2}').lr_scheduler_kwargs == {"num_cycles": 2}
    with pytest.raises(ValueError, match="lr_scheduler_kwargs='nope' is not a JSON object"):
        TrainingArguments(out, lr_scheduler_kwargs="nope")
    assert TrainingArguments(out, include_num_input_tokens_seen=True).include_num_input_tokens_seen == "all"
    assert TrainingArguments(out, group_by_length=True).train_sampling_strategy == "group_by_length"
    assert TrainingArguments(out, train_sampling_strategy="group_by_length").group_by_length
    with pytest.raises(ValueError, match="train_sampling_strategy='shuffled'"):
        TrainingArguments(out, train_sampling_strategy="shuffled")
    with pytest.raises(ValueError, match="dataloader_persistent_workers"):
        TrainingArguments(out, dataloader_persistent_workers=True)
    TrainingArguments(out, dataloader_num_workers=1, dataloader_persistent_workers=True, dataloader_prefetch_factor=2,
                      dataloader_multiprocessing_context="spawn", dataloader_pin_memory=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16=True needs a CUDA GPU"):
            TrainingArguments(out, fp16=True)
        with pytest.raises(ValueError, match="tf32=True needs"):
            TrainingArguments(out, tf32=True)
    TrainingArguments(out, tf32=False)
    for name in ("sgd", "adagrad", "rmsprop", "adamw_torch", "adamw_torch_fused", "adafactor"):
        TrainingArguments(out, optim=name)
    with pytest.raises(ValueError, match="optim='adamw_bnb_8bit' is not supported"):
        TrainingArguments(out, optim="adamw_bnb_8bit")
    assert TrainingArguments(out, log_level="error", log_level_replica="info").get_process_log_level() == \
        logging.ERROR
    assert not TrainingArguments(out, log_on_each_node=False).should_log is False  # one process: main either way
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert TrainingArguments(out).local_rank == 0
    for value in ("wandb", "mlflow"):  # accepted here; the Trainer fails as the reference does (test_trainer_hooks)
        assert TrainingArguments(out, report_to=value).report_to == [value]
    with pytest.raises(ValueError, match="report_to='nothing' is not supported"):
        TrainingArguments(out, report_to="nothing")
    assert TrainingArguments(out, run_name="r1").run_name == "r1"
    # 4.x scripts pass --overwrite_output_dir (5.x removed it): parsed for them, as then
    parsed, = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--output_dir", out,
                                                                              "--overwrite_output_dir"])
    assert parsed.overwrite_output_dir and not TrainingArguments(out).overwrite_output_dir
    assert TrainingArguments(out, full_determinism=True).full_determinism
