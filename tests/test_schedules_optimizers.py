"""Every lr_scheduler_type, the named schedule functions, Adafactor and AdafactorSchedule against the reference's."""
import copy
import inspect
import warnings
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import optimization as ref  # noqa: E402

from tuneforge.training import optim, schedules  # noqa: E402

STEPS, WARMUP = 30, 4
# (name, lr_scheduler_kwargs): every SchedulerType, with the keyword arguments it takes.
CASES = [
    ("linear", {}), ("cosine", {}), ("cosine", {"num_cycles": 0.7}), ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {}), ("polynomial", {"lr_end": 1e-3, "power": 2.0}), ("constant", {}),
    ("constant_with_warmup", {}), ("inverse_sqrt", {}), ("inverse_sqrt", {"timescale": 7}),
    ("cosine_with_min_lr", {"min_lr": 1e-3}), ("cosine_with_min_lr", {"min_lr_rate": 0.1, "num_cycles": 0.4}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_warmup_with_min_lr", {"min_lr": 1e-3, "warmup_lr_rate": 0.2, "num_cycles": 0.3}),
    ("warmup_stable_decay", {"num_decay_steps": 10}),
    ("warmup_stable_decay", {"num_decay_steps": 8, "warmup_type": "cosine", "decay_type": "1-sqrt",
                             "min_lr_ratio": 0.1}),
    ("warmup_stable_decay", {"num_decay_steps": 6, "num_stable_steps": 9, "warmup_type": "1-sqrt",
                             "decay_type": "linear", "min_lr_ratio": 0.05}),
    ("warmup_stable_decay", {"num_decay_steps": 9, "decay_type": "cosine", "num_cycles": 0.25}),
    ("reduce_lr_on_plateau", {}), ("reduce_lr_on_plateau", {"patience": 1, "factor": 0.5, "cooldown": 1}),
    ("greedy", {}), ("greedy", {"patience": 1, "factor": 0.7, "min_lr": 0.02, "max_lr": 0.15, "cooldown": 1,
                                "warmup": 1, "reset_start": 2}),
    ("greedy", {"patience": 1, "mode": "max", "threshold_mode": "rel", "threshold": 0.01, "smooth": True,
                "window_size": 3, "min_lr": [0.01, 0.005]}),
    ("greedy", {"patience": 0, "factor": 0.5, "min_lr": 0.02, "reset_start": 2}),  # down to min_lr, then over
]
# Falls, stalls, rises: enough to move every metric-driven schedule both ways.
METRICS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.61, 0.6, 0.6, 0.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3,
           0.3, 0.3, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]


def sgd():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1)


def lrs_over(scheduler, opt, metric_driven):
    seen = []
    for metric in METRICS[:STEPS]:
        opt.step()
        scheduler.step(metric) if metric_driven else scheduler.step()
        seen.append([g["lr"] for g in opt.param_groups])
    return seen


def test_every_reference_schedule_is_covered():
    assert {name for name, _ in CASES} == {t.value for t in transformers.SchedulerType} == set(schedules.SCHEDULES)


NO_TOTAL = ("constant", "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "greedy")  # no step count


RUNS = [(name, kwargs, total) for name, kwargs in CASES for total in (STEPS, None)
        if total or name in NO_TOTAL or "num_stable_steps" in kwargs]


@pytest.mark.parametrize("name,kwargs,total", RUNS)
def test_get_scheduler_matches_reference(name, kwargs, total):
    ours_opt, ref_opt = sgd(), sgd()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wsd with both step counts warns, in both
        ours = schedules.get_scheduler(name, ours_opt, WARMUP, total, copy.deepcopy(kwargs))
        theirs = ref.get_scheduler(name, ref_opt, WARMUP, total, copy.deepcopy(kwargs))
    metric_driven = name in schedules.METRIC_SCHEDULES
    assert type(ours).__name__ == type(theirs).__name__ and schedules.metric_driven(ours) == metric_driven
    ours_lrs, ref_lrs = lrs_over(ours, ours_opt, metric_driven), lrs_over(theirs, ref_opt, metric_driven)
    for step, (a, b) in enumerate(zip(ours_lrs, ref_lrs)):
        assert a == pytest.approx(b, abs=1e-12, rel=0), (step, a, b)
    assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), abs=1e-12, rel=0)
    if metric_driven:
        assert len({tuple(lr) for lr in ours_lrs}) > 1 or not kwargs  # the sequence moved it


def test_greedy_state_dict_round_trips_and_is_the_references():
    kwargs = {"patience": 1, "factor": 0.7, "min_lr": 0.02, "smooth": True, "window_size": 3, "cooldown": 1}
    opt, ref_opt = sgd(), sgd()
    ours, theirs = schedules.GreedyLR(opt, **kwargs), ref.GreedyLR(ref_opt, **kwargs)
    for metric in METRICS[:12]:
        ours.step(metric), theirs.step(metric)
    state = ours.state_dict()
    assert state == theirs.state_dict()
    saved = torch.load(_saved(state), weights_only=True)  # as the Trainer's scheduler.pt
    resumed_opt, ref_resumed_opt = sgd(), sgd()
    resumed, ref_resumed = schedules.GreedyLR(resumed_opt, **kwargs), ref.GreedyLR(ref_resumed_opt, **kwargs)
    resumed.load_state_dict(saved)
    ref_resumed.load_state_dict(saved)  # the reference takes tuneforge's state
    for metric in METRICS[12:]:
        ours.step(metric), resumed.step(metric), ref_resumed.step(metric)
        assert resumed.get_last_lr() == ours.get_last_lr() == ref_resumed.get_last_lr()


def _saved(state):
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


NAMED = [  # (function name, arguments after the optimizer)
    ("get_constant_schedule", {}), ("get_constant_schedule_with_warmup", {"num_warmup_steps": WARMUP}),
    ("get_linear_schedule_with_warmup", {"num_warmup_steps": WARMUP, "num_training_steps": STEPS}),
    ("get_cosine_schedule_with_warmup", {"num_warmup_steps": WARMUP, "num_training_steps": STEPS,
                                         "num_cycles": 0.7}),
    ("get_cosine_with_hard_restarts_schedule_with_warmup", {"num_warmup_steps": WARMUP, "num_training_steps": STEPS,
                                                            "num_cycles": 2}),
    ("get_polynomial_decay_schedule_with_warmup", {"num_warmup_steps": WARMUP, "num_training_steps": 20,
                                                   "lr_end": 1e-3, "power": 3.0}),
    ("get_inverse_sqrt_schedule", {"num_warmup_steps": WARMUP}),
    ("get_inverse_sqrt_schedule", {"num_warmup_steps": 0, "timescale": 5}),
    ("get_cosine_with_min_lr_schedule_with_warmup", {"num_warmup_steps": WARMUP, "num_training_steps": STEPS,
                                                     "min_lr": 1e-3}),
    ("get_cosine_with_min_lr_schedule_with_warmup_lr_rate", {"num_warmup_steps": WARMUP, "num_training_steps": STEPS,
                                                             "min_lr_rate": 0.05, "warmup_lr_rate": 0.1}),
    ("get_wsd_schedule", {"num_warmup_steps": WARMUP, "num_decay_steps": 10, "num_training_steps": STEPS,
                          "warmup_type": "cosine", "decay_type": "linear", "min_lr_ratio": 0.1}),
    ("get_wsd_schedule", {"num_warmup_steps": 0, "num_decay_steps": 5, "num_stable_steps": 12}),
    ("get_reduce_on_plateau_schedule", {"patience": 2}), ("get_greedy_schedule", {"patience": 1, "factor": 0.5}),
]


@pytest.mark.parametrize("name,kwargs", NAMED)
def test_named_schedules_match_reference(name, kwargs):
    ours_opt, ref_opt = sgd(), sgd()
    ours, theirs = getattr(schedules, name)(ours_opt, **kwargs), getattr(ref, name)(ref_opt, **kwargs)
    metric_driven = name in ("get_reduce_on_plateau_schedule", "get_greedy_schedule")
    for step, (a, b) in enumerate(zip(lrs_over(ours, ours_opt, metric_driven), lrs_over(theirs, ref_opt,
                                                                                          metric_driven))):
        assert a == pytest.approx(b, abs=1e-12, rel=0), (name, step)


def test_named_functions_have_the_references_signatures():
    names = [n for n in dir(ref) if n.startswith("get_") and n != "get_scheduler"]
    for name in names:
        ours, theirs = inspect.signature(getattr(schedules, name)), inspect.signature(getattr(ref, name))
        assert [(p.name, p.default) for p in ours.parameters.values()] == \
            [(p.name, p.default) for p in theirs.parameters.values()], name


def small_model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(dtype)


def groups(model, weight_decay=0.0):  # as create_optimizer: no decay on biases
    return [{"params": [p for n, p in model.named_parameters() if n.endswith("weight")],
             "weight_decay": weight_decay},
            {"params": [p for n, p in model.named_parameters() if n.endswith("bias")], "weight_decay": 0.0}]


def train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


ADAFACTOR = [
    dict(lr=1e-2, relative_step=False, scale_parameter=False),
    dict(lr=1e-2, relative_step=False, scale_parameter=True, beta1=0.9),
    dict(),
    dict(warmup_init=True, beta1=0.8, clip_threshold=0.5, decay_rate=-0.6),
    dict(lr=3e-2, relative_step=False, eps=(1e-20, 1e-2), beta1=0.5),
]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("kwargs", ADAFACTOR)
def test_adafactor_matches_reference(kwargs, weight_decay):
    ours_model, ref_model = small_model(), small_model()
    ours = optim.Adafactor(groups(ours_model, weight_decay), **kwargs)
    theirs = ref.Adafactor(groups(ref_model, weight_decay), **kwargs)
    train(ours_model, ours, 20)
    train(ref_model, theirs, 20)
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()


def test_adafactor_bfloat16_matches_reference():
    ours_model, ref_model = small_model(torch.bfloat16), small_model(torch.bfloat16)
    ours, theirs = optim.Adafactor(ours_model.parameters(), beta1=0.9), ref.Adafactor(ref_model.parameters(), beta1=0.9)
    train(ours_model, ours, 20)
    train(ref_model, theirs, 20)
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs", [ADAFACTOR[1], ADAFACTOR[3]])
def test_adafactor_state_dict_round_trips(kwargs):
    model = small_model()
    opt = optim.Adafactor(groups(model, 0.1), **kwargs)
    train(model, opt, 10)
    resumed_model = copy.deepcopy(model)
    resumed = optim.Adafactor(groups(resumed_model, 0.1), **kwargs)
    resumed.load_state_dict(torch.load(_saved(opt.state_dict()), weights_only=True))
    train(model, opt, 10, start=10)
    train(resumed_model, resumed, 10, start=10)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_adafactor_schedule_matches_reference():
    ours_model, ref_model = small_model(), small_model()
    ours_opt, ref_opt = optim.Adafactor(ours_model.parameters()), ref.Adafactor(ref_model.parameters())
    ours, theirs = schedules.AdafactorSchedule(ours_opt, 1e-3), ref.AdafactorSchedule(ref_opt, 1e-3)
    assert ours.get_last_lr() == theirs.get_last_lr() == [1e-3]
    for step in range(5):
        for model, opt, scheduler in ((ours_model, ours_opt, ours), (ref_model, ref_opt, theirs)):
            model(torch.ones(2, 5)).sum().backward()
            opt.step()
            scheduler.step()
            opt.zero_grad(set_to_none=True)
        assert [float(lr) for lr in ours.get_last_lr()] == pytest.approx([float(lr) for lr in theirs.get_last_lr()])


def test_create_optimizer_adafactor_is_the_references_trainer():
    args = SimpleNamespace(optim="adafactor", learning_rate=3e-3, weight_decay=0.1)
    model = small_model()
    opt = optim.create_optimizer(model, args)
    ref_args = transformers.TrainingArguments("unused", optim="adafactor", learning_rate=3e-3, weight_decay=0.1,
                                              report_to="none")
    cls, ref_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(ref_args)
    assert cls is ref.Adafactor and isinstance(opt, optim.Adafactor)
    assert {k: opt.defaults[k] for k in ref_kwargs} == ref_kwargs
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]  # the weights; the biases


def both_raise(ours, theirs, ref_error=ValueError, match=None):
    with pytest.raises(ref_error):
        theirs()
    with pytest.raises(ValueError, match=match):
        ours()


def test_bad_arguments_raise_as_the_reference():
    p = [torch.nn.Parameter(torch.zeros(2))]
    both_raise(lambda: optim.Adafactor(p, lr=1e-3), lambda: ref.Adafactor(p, lr=1e-3), match="Cannot combine")
    both_raise(lambda: optim.Adafactor(p, lr=1e-3, relative_step=False, warmup_init=True),
               lambda: ref.Adafactor(p, lr=1e-3, relative_step=False, warmup_init=True), match="warmup_init")
    with pytest.raises(ValueError, match="needs an lr"):  # the reference fails at the first step
        optim.Adafactor(p, relative_step=False)
    with pytest.raises(ValueError, match="must be a pair"):
        optim.Adafactor(p, eps=1e-30)
    for name, warmup, total, kwargs, match in [
        ("nope", 0, 10, {}, "not a valid SchedulerType"),
        ("linear", None, 10, {}, "requires `num_warmup_steps`"),
        ("inverse_sqrt", None, None, {}, "requires `num_warmup_steps`"),
        ("cosine", 2, None, {}, "requires `num_training_steps`"),
        ("cosine_warmup_with_min_lr", 2, None, {"min_lr_rate": 0.1}, "requires `num_training_steps`"),
        ("polynomial", 2, 10, {"lr_end": 0.1}, "lr_end"),
        ("cosine_with_min_lr", 2, 10, {}, "exactly one of min_lr and min_lr_rate"),
        ("cosine_warmup_with_min_lr", 2, 10, {"min_lr": 1e-3, "min_lr_rate": 0.1}, "exactly one of"),
        ("warmup_stable_decay", 2, None, {"num_decay_steps": 3}, "num_training_steps or num_stable_steps"),
        ("warmup_stable_decay", 2, 10, {"num_decay_steps": 3, "warmup_type": "exp"}, "warmup_type='exp'"),
        ("warmup_stable_decay", 2, 10, {"num_decay_steps": 3, "decay_type": "step"}, "decay_type='step'"),
        ("greedy", 0, 10, {"factor": 1.0}, "Factor should be < 1.0"),
        ("greedy", 0, 10, {"mode": "up"}, "mode='up'"),
        ("greedy", 0, 10, {"threshold_mode": "pct"}, "threshold_mode='pct'"),
        ("greedy", 0, 10, {"min_lr": [0.1, 0.2, 0.3]}, "expected 2 values"),
    ]:
        both_raise(lambda: schedules.get_scheduler(name, sgd(), warmup, total, kwargs),
                   lambda: ref.get_scheduler(name, sgd(), warmup, total, kwargs), match=match)
    # Where the reference raises a TypeError for a keyword the schedule does not take, tuneforge names it.
    for name, kwargs, match in [("warmup_stable_decay", {}, "needs num_decay_steps"),
                                ("reduce_lr_on_plateau", {"num_cycles": 2}, "num_cycles do not apply"),
                                ("greedy", {"power": 2}, "power do not apply"), ("cosine", {"power": 2}, "power")]:
        both_raise(lambda: schedules.get_scheduler(name, sgd(), 2, 10, kwargs),
                   lambda: ref.get_scheduler(name, sgd(), 2, 10, kwargs), ref_error=TypeError, match=match)


def test_scripts_importing_from_transformers_optimization_find_every_name():
    import transformers.optimization as theirs

    import tuneforge.optimization as ours
    wanted = {n for n in dir(theirs) if n.startswith("get_") or n in ("Adafactor", "AdafactorSchedule", "GreedyLR",
                                                                      "SchedulerType")}
    assert wanted and not [n for n in wanted if not hasattr(ours, n)]
