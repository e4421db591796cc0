"""Question answering on the decoders (Llama, Mistral, Qwen2, Qwen3, GPT-2) against the reference on tiny random
configs: start/end logits with left and right padding, the loss with answers outside the input, gradients, folders
both ways (the reference's `transformer`/`model` backbone names), and the QA recipe's flow under the Trainer on a
tiny decoder whose tokenizer has no [CLS] token."""
import pytest
import torch

from tuneforge import AutoModelForCausalLM, AutoModelForQuestionAnswering, InputError

transformers = pytest.importorskip("transformers")

from test_decoders import TINY, assert_same_grads, batch, grads  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt2"]
LOWEST = torch.finfo(torch.float32).min


def reference_pair(model_type, folder, task=transformers.AutoModelForQuestionAnswering):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **TINY[model_type])
    ref = task.from_config(config).eval()
    ref.save_pretrained(folder)
    return ref, AutoModelForQuestionAnswering.from_pretrained(folder)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_logits_loss_gradients_and_folders_match_reference(model_type, tmp_path):
    ref, ours = reference_pair(model_type, tmp_path / "ref")
    assert type(ours).__name__ == type(ref).__name__
    assert ours.state_dict().keys() == ref.state_dict().keys(), "a strict load of the reference's keys"
    # Unpadded, everything is the reference's: positions past the input (>= T) are ignored, negative ones clamp to 0.
    ids, _ = batch(lengths=(9, 9, 9, 9))
    ids = ids[:, :9]
    starts, ends = torch.tensor([2, 20, 9, -3]), torch.tensor([4, 25, 3, 1])
    expected = ref(input_ids=ids, start_positions=starts, end_positions=ends)
    got = ours(ids, start_positions=starts, end_positions=ends)
    for name in ("start_logits", "end_logits"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-6, rtol=1e-5)
    expected.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, ref)
    # Our folder, trained a little, loads in the reference with the same logits, under the reference's class.
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01)
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == type(ref).__name__
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).start_logits, back(input_ids=ids).start_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batches_compute_real_tokens_only(model_type, side, tmp_path):
    if side == "left" and model_type == "gpt2":
        pytest.skip("the reference numbers GPT-2's positions from the grid's first column, padding included")
    ref, ours = reference_pair(model_type, tmp_path)
    ids, mask = batch(lengths=(9, 5, 12, 1), side=side)
    real = mask.bool()
    first = real.long().argmax(1)  # each row's first real column
    starts, ends = first + torch.tensor([1, 0, 4, 0]), first + torch.tensor([3, 2, 11, 0])
    expected = ref(input_ids=ids, attention_mask=mask)
    got = ours(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    for name in ("start_logits", "end_logits"):
        assert got[name].shape == expected[name].shape
        torch.testing.assert_close(got[name][real], expected[name][real], atol=1e-5, rtol=1e-4)
        assert torch.all(got[name][~real] == LOWEST), "padding takes no probability and is never computed"
    # The loss is the reference's cross-entropy over each row's real tokens (the reference's own also spreads the
    # softmax over padding, so it depends on how far a batch is padded), and so are its gradients.
    masked = [expected[k].masked_fill(~real, LOWEST) for k in ("start_logits", "end_logits")]
    cross_entropy = torch.nn.functional.cross_entropy
    want = (cross_entropy(masked[0], starts) + cross_entropy(masked[1], ends)) / 2
    torch.testing.assert_close(got.loss, want, atol=1e-5, rtol=1e-5)
    want.backward()
    got.loss.backward()
    for key, grad in grads(ref).items():
        torch.testing.assert_close(grads(ours)[key], grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "gpt2"])
def test_a_causal_lm_checkpoint_gives_its_backbone_to_the_qa_head(model_type, tmp_path):
    """The usual start: a pretrained causal LM. Its backbone (`model.` for the Llama family) loads into the QA head's
    (`transformer.` for Llama/Qwen; the reference leaves that one freshly initialised), only qa_outputs is new."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **TINY[model_type])
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path)
    qa = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    lm_backbone = dict(lm.base_model.named_parameters())
    for name, p in qa.base_model.named_parameters():
        assert torch.equal(p, lm_backbone[name]), name
    ids, mask = batch()
    with torch.no_grad():
        lm_hidden, _ = lm.base_model.encode(ids, mask)
        qa_hidden, _ = qa.base_model.encode(ids, mask)
    assert torch.equal(lm_hidden, qa_hidden)


def test_an_answer_on_padding_is_one_clear_error(tmp_path):
    _, ours = reference_pair("llama", tmp_path)
    ids, mask = batch(lengths=(4, 7), side="left")
    with pytest.raises(InputError, match=r"start_positions\[0\] = 0 points at a padding token .*padding_side='right'"):
        ours(ids, attention_mask=mask, start_positions=torch.tensor([0, 3]), end_positions=torch.tensor([5, 4]))


# ---- the recipe's flow under the Trainer --------------------------------------------------------------------------

CONTEXTS = ["The Normans gave their name to Normandy, a region in France. They descended from Norse raiders.",
            "Ada Lovelace wrote the first program for the Analytical Engine, a machine designed by Charles Babbage.",
            "The river Seine flows through Paris and reaches the sea at Le Havre, after a course of 777 kilometres."]
QUESTIONS = [("Where is Normandy?", "France"), ("Who designed the Analytical Engine?", "Charles Babbage"),
             ("Where does the Seine reach the sea?", "Le Havre")]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE like the decoders' own: a pad token, no [CLS] and no special tokens around the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tuneforge.tokenizer import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CONTEXTS + [q for q, _ in QUESTIONS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|endoftext|>")


def test_the_qa_recipe_trains_a_tiny_decoder_under_the_trainer(bpe_tokenizer, tmp_path):
    from tuneforge import DefaultDataCollator, Trainer, TrainingArguments, metrics
    from tuneforge.question_answering import (postprocess_qa_predictions, prepare_train_features,
                                              prepare_validation_features)
    tokenizer = bpe_tokenizer
    assert tokenizer.cls_token is None
    examples = {"id": [str(i) for i in range(3)], "question": [q for q, _ in QUESTIONS], "context": CONTEXTS,
                "answers": [{"text": [a], "answer_start": [c.index(a)]} for (_, a), c in zip(QUESTIONS, CONTEXTS)]}
    # Short windows, so that contexts overflow and some windows do not hold the answer: the same windows and
    # positions as from the reference's tokenizer over the same backend (whose pairs' later windows know which
    # tokens are the context only through the empty template both tokenizers add).
    train = prepare_train_features(examples, tokenizer, max_length=32, stride=8)
    from tokenizers import Tokenizer
    reference = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer._tokenizer.to_str()),
                                                     pad_token="<pad>", eos_token="<|endoftext|>")
    theirs = prepare_train_features(examples, reference, max_length=32, stride=8)
    for key in ("input_ids", "attention_mask", "start_positions", "end_positions"):
        assert train[key] == theirs[key], key
    assert all(train.sequence_ids(i) == theirs.sequence_ids(i) for i in range(len(train["input_ids"])))
    assert len(train["input_ids"]) > 3 and 0 in train["start_positions"]
    for i, start in enumerate(train["start_positions"]):
        if start == 0:  # no [CLS]: "not in this window" points at the window's first token, the question's
            assert train.sequence_ids(i)[0] == 0 and train["attention_mask"][i][0] == 1
    rows = [{k: train[k][i] for k in ("input_ids", "attention_mask", "start_positions", "end_positions")}
            for i in range(len(train["input_ids"]))]
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("llama", **{**TINY["llama"], "vocab_size": len(tokenizer)})
    transformers.AutoModelForQuestionAnswering.from_config(config).save_pretrained(tmp_path / "model")
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "model")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=5e-3,
                             num_train_epochs=8, save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows,
                      data_collator=DefaultDataCollator())
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before * 0.7, (before, after)
    features = prepare_validation_features(examples, tokenizer, max_length=32, stride=8)
    columns = ("input_ids", "attention_mask")
    predicted = trainer.predict([{k: features[k][i] for k in columns} for i in range(len(features["input_ids"]))])
    start_logits, end_logits = predicted.predictions
    assert start_logits.shape == (len(features["input_ids"]), 32)
    answers = postprocess_qa_predictions([{"id": i, "context": c} for i, c in zip(examples["id"], CONTEXTS)],
                                         [{"example_id": e, "offset_mapping": o} for e, o in
                                          zip(features["example_id"], features["offset_mapping"])],
                                         start_logits, end_logits)
    assert [a["id"] for a in answers] == examples["id"]
    assert all(a["prediction_text"] in c for a, c in zip(answers, CONTEXTS))
    scores = metrics.load("squad").compute(
        predictions=answers, references=[{"id": i, "answers": a} for i, a in zip(examples["id"], examples["answers"])])
    assert set(scores) == {"exact_match", "f1"}
