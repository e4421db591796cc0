"""The guide's Keras route on Keras 3 (torch backend) over tuneforge's own models: variables are the torch
parameters, the model's own loss per problem type, the fused Adam step against Keras' stock one, prepare_tf_dataset,
saving (weights, .keras in safe mode, save_pretrained read by tuneforge and by the reference), callbacks, bad input.
Tiny random BERTs except for the guide run on the packaged MiniLM."""
import csv
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("keras") is None:
    pytest.skip("Keras 3 is not installed (pip install 'tuneforge[keras]')", allow_module_level=True)
if "keras" in sys.modules and sys.modules["keras"].backend.backend() != "torch":
    pytest.skip("Keras is loaded on another backend in this process", allow_module_level=True)
import tuneforge.keras  # noqa: E402,F401  (sets Keras' backend to torch before Keras loads)
import keras  # noqa: E402

from tuneforge import TFAutoModelForSequenceClassification  # noqa: E402
from tuneforge.keras import KerasMetricCallback, PushToHubCallback, TFPreTrainedModel  # noqa: E402
from tuneforge.models.bert import BertConfig  # noqa: E402

from conftest import SST2_DIR  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
VOCAB = 256  # the touched-rows update of the word embedding runs up to 64 touched rows


def tiny_config(**overrides):
    values = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32, num_labels=3)
    values.update(overrides)
    return BertConfig(**values)


def tiny_model(seed=0, **overrides) -> TFPreTrainedModel:
    torch.manual_seed(seed)
    return TFAutoModelForSequenceClassification.from_config(tiny_config(**overrides))


def no_dropout(**overrides):
    return dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)


def batch(n=8, width=10, seed=0, labels=3, high=VOCAB):
    """Right-padded inputs of varied lengths (x dict of numpy arrays) with token ids below `high`, and class ids."""
    g = np.random.default_rng(seed)
    lengths = g.integers(3, width + 1, n)
    ids = g.integers(1, high, (n, width))
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}, g.integers(0, labels, n)


def rows(n=24, seed=0, labels=3):
    x, y = batch(n, 10, seed, labels)
    out = []
    for i in range(n):
        length = int(x["attention_mask"][i].sum())
        out.append({"input_ids": list(x["input_ids"][i][:length]), "attention_mask": [1] * length,
                    "label": int(y[i]), "text": f"row {i}"})
    return out


def torch_logits(model, x) -> np.ndarray:
    model.torch_model.eval()
    with torch.no_grad():
        return model.torch_model(**{k: torch.as_tensor(v) for k, v in x.items()}).logits.numpy()


def run(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("KERAS_BACKEND", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


# ------------------------------------------------------------------------------------------------ loading keras


def test_import_tuneforge_never_imports_keras_and_the_tf_names_load_it_on_torch():
    out = run("import sys, tuneforge; assert 'keras' not in sys.modules; "
              "cls = tuneforge.TFAutoModelForSequenceClassification; import keras; "
              "print(cls.__name__, keras.backend.backend())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TFAutoModelForSequenceClassification", "torch"]


def test_keras_missing_or_on_another_backend_is_one_clear_line():
    # backend.py alone (it imports nothing of tuneforge or torch), in one fresh process for the three cases
    code = f"""
import importlib.util, os, sys, types
spec = importlib.util.spec_from_file_location("backend", {SRC!r} + "/tuneforge/keras/backend.py")
backend = importlib.util.module_from_spec(spec); spec.loader.exec_module(backend)
def message(setup):
    setup()
    try:
        backend.load_keras()
    except Exception as e:
        print(type(e).__name__ + ": " + str(e))
    sys.modules.pop("keras", None); os.environ.pop("KERAS_BACKEND", None)
def jax_keras():  # a stand-in for Keras loaded on JAX: no other backend is installed here
    keras = types.ModuleType("keras"); keras.__version__ = "3.5.0"
    keras.backend = types.SimpleNamespace(backend=lambda: "jax"); sys.modules["keras"] = keras
message(lambda: sys.modules.__setitem__("keras", None))
message(jax_keras)
message(lambda: os.environ.__setitem__("KERAS_BACKEND", "jax"))
"""
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "ImportError: tuneforge's Keras route needs Keras 3: pip install 'tuneforge[keras]' (or pip install "
        "'keras>=3')",
        "RuntimeError: Keras is already running on the 'jax' backend, and tuneforge's Keras models need the torch "
        "backend: set KERAS_BACKEND=torch before anything imports keras",
        "RuntimeError: KERAS_BACKEND='jax': tuneforge's Keras models run on Keras' torch backend; unset "
        "KERAS_BACKEND or set it to 'torch'"]


def test_a_dtype_policy_it_cannot_honour_is_refused():
    with pytest.raises(ValueError, match="dtype policy 'mixed_bfloat16'.*set_dtype_policy"):
        TFPreTrainedModel(tiny_model().torch_model, dtype="mixed_bfloat16")


# ------------------------------------------------------------------------------------- variables = parameters


def test_variables_are_the_parameters_named_after_them_and_the_model_is_built():
    model = tiny_model()
    params = dict(model.torch_model.named_parameters())
    assert model.built and len(model.variables) == len(params)
    for v in model.variables:
        assert v.value is params[v.name]
        assert v.path == f"{model.name}/{v.name}"
    assert model.count_params() == sum(p.numel() for p in params.values())


def test_freezing_through_torch_or_keras_is_seen_by_both():
    model = tiny_model()
    body = [p for n, p in model.torch_model.named_parameters() if n.startswith("bert.")]
    model.torch_model.bert.requires_grad_(False)  # torch
    assert {v.name for v in model.trainable_variables} == {"classifier.weight", "classifier.bias"}
    model.trainable_variables[0].trainable = False  # keras, one variable
    assert not model.torch_model.classifier.weight.requires_grad
    model.trainable = False  # keras, all
    assert not any(p.requires_grad for p in model.torch_model.parameters()) and not model.trainable_variables
    model.trainable = True
    assert all(p.requires_grad for p in model.torch_model.parameters())

    # fit with the body frozen through torch moves the head only
    model.torch_model.bert.requires_grad_(False)
    before = [p.detach().clone() for p in body]
    head = model.torch_model.classifier.weight.detach().clone()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = batch()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(torch.equal(a, p) for a, p in zip(before, body))
    assert not torch.equal(head, model.torch_model.classifier.weight)


def test_every_variable_gets_a_gradient_and_call_training_none_is_inference():
    model = tiny_model()
    x, y = batch()
    before = {v.name: v.value.detach().clone() for v in model.trainable_variables}
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    unchanged = [v.name for v in model.trainable_variables if torch.equal(before[v.name], v.value)]
    assert unchanged == []
    tensors = {k: torch.as_tensor(v) for k, v in x.items()}
    first, second = model(tensors)["logits"], model(tensors)["logits"]  # training=None: no dropout
    assert torch.equal(first, second) and not model.torch_model.training
    assert not torch.equal(model(tensors, training=True)["logits"], first)


# ---------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("problem", ["single_label_classification", "multi_label_classification", "regression"])
def test_each_problem_type_gets_the_models_own_loss(problem):
    import torch.nn.functional as F
    num_labels = 1 if problem == "regression" else 3
    model = tiny_model(**no_dropout(num_labels=num_labels))
    x, ids = batch()
    g = np.random.default_rng(1)
    y = {"single_label_classification": ids,
         "multi_label_classification": (g.random((8, 3)) > 0.5).astype(np.float32),
         "regression": g.normal(size=8).astype(np.float32)}[problem]
    model.compile(optimizer="adam")  # no loss: the model's own
    loss = model.evaluate(x, y, batch_size=8, verbose=0)
    logits = torch.as_tensor(torch_logits(model, x))
    labels = torch.as_tensor(y)
    expected = {"single_label_classification": lambda: F.cross_entropy(logits, labels),
                "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(logits, labels),
                "regression": lambda: F.mse_loss(logits.squeeze(-1), labels)}[problem]()
    torch_loss = model.torch_model(**{k: torch.as_tensor(v) for k, v in x.items()}, labels=labels).loss
    assert model.config.problem_type == problem
    assert loss == pytest.approx(float(expected), rel=1e-5) and loss == pytest.approx(float(torch_loss), rel=1e-5)

    # sample_weight: Keras' reduction, the weighted sum over the batch size
    w = g.random(8).astype(np.float32)
    weighted = model.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0)
    per_example = {"single_label_classification": lambda: F.cross_entropy(logits, labels, reduction="none"),
                   "multi_label_classification":
                       lambda: F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1),
                   "regression": lambda: F.mse_loss(logits.squeeze(-1), labels, reduction="none")}[problem]()
    assert weighted == pytest.approx(float((per_example * torch.as_tensor(w)).sum() / 8), rel=1e-5)


def test_an_explicit_keras_loss_metrics_and_class_weight_work():
    model = tiny_model(**no_dropout())
    x, y = batch()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    result = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    logits = torch_logits(model, x)
    assert result["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.as_tensor(logits), torch.as_tensor(y))), rel=1e-5)
    assert result["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).mean()))

    # class_weight is sample_weight by class: the same step
    weights = {0: 0.5, 1: 2.0, 2: 1.0}
    a, b = tiny_model(**no_dropout()), tiny_model(**no_dropout())
    for m in (a, b):
        m.compile(optimizer=keras.optimizers.Adam(1e-2))
    a.fit(x, y, class_weight=weights, batch_size=8, verbose=0, shuffle=False)
    b.fit(x, y, sample_weight=np.array([weights[int(c)] for c in y], dtype=np.float32), batch_size=8, verbose=0,
          shuffle=False)
    assert all(torch.allclose(p, q, atol=1e-7) for p, q in zip(a.torch_model.parameters(), b.torch_model.parameters()))
    c = tiny_model(**no_dropout())
    c.compile(optimizer=keras.optimizers.Adam(1e-2))
    c.fit(x, y, batch_size=8, verbose=0, shuffle=False)
    assert not torch.allclose(a.torch_model.classifier.weight, c.torch_model.classifier.weight)


def test_labels_outside_num_labels_are_one_clear_line():
    model = tiny_model()
    model.compile(optimizer="adam")
    x, _ = batch()
    with pytest.raises(ValueError, match=r"^label 7 is outside \[0, 3\) for a model with num_labels=3"):
        model.fit(x, np.full(8, 7), batch_size=8, verbose=0)
    data = rows()
    data[5]["label"] = 3
    with pytest.raises(ValueError, match=r"^column 'label' row 5: label 3 is outside \[0, 3\)"):
        model.prepare_tf_dataset(data, batch_size=4)


def test_jit_compile_true_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="jit_compile=True is not supported: tuneforge's packed forward"):
        tiny_model().compile(optimizer="adam", jit_compile=True)


# ------------------------------------------------------------------------------------------------- optimizer


def keras_adam_reference(params, grads_fn, steps, lr, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' Adam written out (its documented update), on plain tensors."""
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = grads_fn(t - 1)
        alpha = lr * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t)
        with torch.no_grad():
            for p, g, mi, vi in zip(params, grads, m, v):
                mi.mul_(b1).add_(g, alpha=1 - b1)
                vi.mul_(b2).add_(g * g, alpha=1 - b2)
                p.sub_(alpha * mi / (vi.sqrt() + eps))


def test_fit_without_dropout_equals_a_plain_torch_loop_after_20_steps():
    model = tiny_model(**no_dropout())
    reference = tiny_model(**no_dropout()).torch_model.train()
    data = rows(n=20 * 4)
    dataset = model.prepare_tf_dataset(data, batch_size=4, shuffle=True, seed=3)
    twin = model.prepare_tf_dataset(data, batch_size=4, shuffle=True, seed=3)
    batches = [twin[i] for i in range(len(twin))]  # epoch 0's order, what fit trains on
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(dataset, epochs=1, verbose=0)
    params = list(reference.parameters())

    def grads(i):
        x, y = batches[i]
        for p in params:
            p.grad = None
        reference(**{k: torch.as_tensor(v) for k, v in x.items()}, labels=torch.as_tensor(y)).loss.backward()
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

    keras_adam_reference(params, grads, 20, 1e-3)
    assert int(model.optimizer.iterations) == 20
    for (name, p), q in zip(model.torch_model.named_parameters(), params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


# lr 1e-3: the two steps differ by rounding (~1 ulp a step), which larger rates amplify through later gradients.
# (optimizer, whether the word embedding takes the touched-rows update)
OPTIMIZERS = {
    "adam": (lambda: keras.optimizers.Adam(1e-3), True),
    "adamw": (lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.05), False),
    "adamw_global_clipnorm_schedule_excluded": (lambda: _excluding(keras.optimizers.AdamW(
        keras.optimizers.schedules.PolynomialDecay(1e-3, decay_steps=6, end_learning_rate=1e-4), weight_decay=0.01,
        global_clipnorm=0.1)), True),
    "adam_clipnorm_amsgrad_schedule": (lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(1e-3, 2, 0.5), clipnorm=0.05, amsgrad=True, beta_2=0.99,
        epsilon=1e-5), False),
    "adamw_clipvalue": (lambda: keras.optimizers.AdamW(1e-3, clipvalue=0.01), False),
}


def _excluding(optimizer):
    optimizer.exclude_from_weight_decay(var_names=["word_embeddings", "bias", "LayerNorm"])
    return optimizer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_fused_step_equals_keras_stock_step(name):
    make, sparse = OPTIMIZERS[name]
    x, y = batch(n=24, high=40)
    fused, stock = tiny_model(**no_dropout()), tiny_model(**no_dropout())
    fused.compile(optimizer=make())
    stock.compile(optimizer=make())
    assert fused._adam_step is not None
    stock._adam_step = None  # Keras' own optimizer.apply
    for m in (fused, stock):
        m.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    rows = fused._adam_step.rows
    assert (rows is not None and not rows.dense) == sparse
    assert int(fused.optimizer.iterations) == int(stock.optimizer.iterations) == 6
    for (n, p), q in zip(fused.torch_model.named_parameters(), stock.torch_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)
    for a, b in zip(fused.optimizer.variables, stock.optimizer.variables):
        torch.testing.assert_close(a.value, b.value, atol=1e-7, rtol=1e-4, msg=a.path)


def test_the_word_embedding_updates_only_touched_rows_and_exactly():
    model = tiny_model(**no_dropout())
    x, y = batch(n=8)
    x["input_ids"] = np.where(x["attention_mask"] > 0, x["input_ids"] % 20 + 1, 0)  # rows 1..20 only
    embedding = model.torch_model.get_input_embeddings().weight
    before = embedding.detach().clone()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert model._adam_step.rows is not None and not model._adam_step.rows.dense  # the sparse path ran
    assert torch.equal(embedding[21:], before[21:]) and not torch.equal(embedding[1:21], before[1:21])
    assert not model.torch_model.get_input_embeddings().sparse  # only during the step


# ------------------------------------------------------------------------------------------------- data


def test_prepare_tf_dataset_keeps_model_columns_pads_per_batch_and_reshuffles_per_epoch():
    model = tiny_model()
    data = rows(n=10)
    ds = model.prepare_tf_dataset(data, batch_size=4, seed=1)  # shuffle=True: drop_remainder=True
    assert len(ds) == 2
    x, y = ds[0]
    assert set(x) == {"input_ids", "attention_mask"}  # "text" dropped; 'label' -> y
    assert x["input_ids"].shape[1] == x["attention_mask"].sum(1).max()  # padded to the batch's longest
    first = [list(b) for b in ds.batches]
    ds.on_epoch_end()  # after a peek at the first batch only (Keras' symbolic build): no new epoch
    assert [list(b) for b in ds.batches] == first
    ds[1]
    ds.on_epoch_end()
    assert [list(b) for b in ds.batches] != first  # a new order every epoch...
    again = model.prepare_tf_dataset(data, batch_size=4, seed=1)
    assert [list(b) for b in again.batches] == first  # ...from the seed
    ordered = model.prepare_tf_dataset(data, batch_size=4, shuffle=False)
    assert len(ordered) == 3 and list(ordered[2][1]) == [r["label"] for r in data[8:]]
    unlabelled = model.prepare_tf_dataset([{k: v for k, v in r.items() if k != "label"} for r in data],
                                          batch_size=4, shuffle=False)
    assert len(unlabelled[0]) == 1
    with pytest.raises(ValueError, match="the dataset has no column the model takes"):
        model.prepare_tf_dataset([{"text": "a", "label": 0}])
    if not _has_tensorflow():
        with pytest.raises(ImportError, match="to_tf_dataset\\(\\) needs TensorFlow"):
            ordered.to_tf_dataset()


def _has_tensorflow():
    import importlib.util
    return importlib.util.find_spec("tensorflow") is not None


def test_predict_gives_logits_in_input_order():
    model = tiny_model()
    data = rows(n=10)
    out = model.predict(model.prepare_tf_dataset(data, batch_size=4, shuffle=False), verbose=0)
    x = {"input_ids": np.zeros((10, 10), np.int64), "attention_mask": np.zeros((10, 10), np.int64)}
    for i, r in enumerate(data):
        x["input_ids"][i, :len(r["input_ids"])] = r["input_ids"]
        x["attention_mask"][i, :len(r["input_ids"])] = 1
    np.testing.assert_allclose(out["logits"], torch_logits(model, x), atol=1e-5)


# ------------------------------------------------------------------------------------------------- saving


def test_weights_and_keras_files_round_trip_with_compile_settings_and_iterations(tmp_path):
    model = tiny_model(**no_dropout())
    x, y = batch()
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.02), metrics=["accuracy"])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    logits = torch_logits(model, x)

    model.save_weights(tmp_path / "w.weights.h5")
    other = tiny_model(seed=5, **no_dropout())
    assert not np.allclose(torch_logits(other, x), logits)
    other.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(torch_logits(other, x), logits)

    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        config = json.loads(z.read("config.json"))  # JSON: the task and config.json values, no pickled module
    assert config["registered_name"] == "tuneforge>TFPreTrainedModel"
    assert len(config["config"]["config"]["id2label"]) == 3 and "module" not in config["config"]
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # safe_mode=True
    np.testing.assert_array_equal(torch_logits(loaded, x), logits)
    assert type(loaded.optimizer).__name__ == "AdamW" and loaded.optimizer.weight_decay == pytest.approx(0.02)
    assert int(loaded.optimizer.iterations) == 2 and loaded._adam_step is not None
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # training resumes identically
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(torch_logits(loaded, x), torch_logits(model, x), atol=1e-6)


def test_save_pretrained_is_a_model_folder_for_tuneforge_and_the_reference(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tuneforge import AutoModelForSequenceClassification
    model = tiny_model(**no_dropout())
    x, y = batch()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, batch_size=8, verbose=0)
    logits = torch_logits(model, x)
    model.save_pretrained(tmp_path / "out")
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    inputs = {k: torch.as_tensor(v) for k, v in x.items()}
    with torch.no_grad():
        np.testing.assert_array_equal(ours(**inputs).logits.numpy(), logits)
        np.testing.assert_allclose(ref(**inputs).logits.numpy(), logits, atol=1e-5)
    again = TFAutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    np.testing.assert_array_equal(torch_logits(again, x), logits)


# ----------------------------------------------------------------------------------------------- callbacks


def test_metric_callback_puts_compute_metrics_in_the_logs():
    model = tiny_model()
    data = rows(n=12)
    eval_set = model.prepare_tf_dataset(data, batch_size=5, shuffle=False)
    seen = {}

    def compute_metrics(eval_predictions):
        predictions, labels = eval_predictions
        seen["shapes"] = predictions.shape, labels.shape
        return {"accuracy": float((predictions.argmax(-1) == labels).mean())}

    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(model.prepare_tf_dataset(data, batch_size=4), epochs=2, verbose=0,
                        callbacks=[KerasMetricCallback(compute_metrics, eval_set)])
    assert len(history.history["accuracy"]) == 2 and seen["shapes"] == ((12, 3), (12,))
    logits = model.predict(eval_set, verbose=0)["logits"]
    labels = np.array([r["label"] for r in data])
    assert history.history["accuracy"][-1] == pytest.approx(float((logits.argmax(-1) == labels).mean()))


def test_push_to_hub_callback_uploads_a_model_folder(hub_env, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from hub_testing import TOKEN
    from tuneforge import AutoModelForSequenceClassification
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    model = tiny_model(**no_dropout())
    data = rows(n=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    user = HfApi(endpoint=hub_env.endpoint).whoami(token=TOKEN)["name"]
    callback = PushToHubCallback(tmp_path / "out", hub_model_id=f"{user}/keras-tiny", hub_token=TOKEN)
    model.fit(model.prepare_tf_dataset(data, batch_size=4), epochs=1, verbose=0, callbacks=[callback])
    files = set(HfApi(endpoint=hub_env.endpoint).list_repo_files(f"{user}/keras-tiny", token=TOKEN))
    assert {"config.json", "model.safetensors", "README.md"} <= files
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pulled = AutoModelForSequenceClassification.from_pretrained(f"{user}/keras-tiny").eval()
    x, _ = batch()
    with torch.no_grad():
        np.testing.assert_array_equal(pulled(**{k: torch.as_tensor(v) for k, v in x.items()}).logits.numpy(),
                                      torch_logits(model, x))


# ---------------------------------------------------------------------------------------------- the guide


def test_guide_keras_code_on_minilm_learns_sst2(minilm_dir, sst2):
    """The guide's Keras code with only its imports changed, shortened for CI (200 phrases, one epoch, 300 test
    sentences); the full run (1,000 phrases, three epochs, 872 sentences) is in README."""
    from datasets import load_dataset
    from keras.optimizers import Adam

    from tuneforge import AutoTokenizer
    from tuneforge import TFAutoModelForSequenceClassification as TFAuto

    dataset = load_dataset("csv", data_files={"train": str(SST2_DIR / "train.tsv"),
                                              "test": str(SST2_DIR / "test.tsv")}, delimiter="\t",
                           quoting=csv.QUOTE_NONE)
    dataset["train"] = dataset["train"].shuffle(seed=0).select(range(200))
    dataset["test"] = dataset["test"].select(range(300))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    dataset = dataset.map(lambda b: tokenizer(b["sentence"], truncation=True), batched=True)
    keras.utils.set_random_seed(0)
    model = TFAuto.from_pretrained(minilm_dir, num_labels=2)
    tf_dataset = model.prepare_tf_dataset(dataset["train"], batch_size=8, shuffle=True, tokenizer=tokenizer)
    model.compile(optimizer=Adam(5e-5))
    model.fit(tf_dataset, verbose=0)
    test = model.prepare_tf_dataset(dataset["test"], batch_size=32, shuffle=False, tokenizer=tokenizer)
    logits = model.predict(test, verbose=0)["logits"]
    accuracy = float((logits.argmax(-1) == np.array(dataset["test"]["label"])).mean())
    assert accuracy > 0.62, accuracy  # chance is about 0.5


def test_a_causal_lm_trains_on_its_own_next_token_loss():
    from tuneforge import AutoConfig, TFAutoModelForCausalLM
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                  max_position_embeddings=32, tie_word_embeddings=True)
    model = TFAutoModelForCausalLM.from_config(config)
    x, _ = batch()
    labels = np.where(x["attention_mask"] > 0, x["input_ids"], -100)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    loss = model.evaluate(x, labels, batch_size=8, verbose=0)
    model.torch_model.eval()
    with torch.no_grad():
        expected = model.torch_model(**{k: torch.as_tensor(v) for k, v in x.items()}, labels=torch.as_tensor(labels))
    assert loss == pytest.approx(float(expected.loss), rel=1e-5)
    assert model.predict(x, batch_size=8, verbose=0)["logits"].shape == (8, 10, VOCAB)
    history = model.fit(x, labels, batch_size=4, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
