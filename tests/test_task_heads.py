"""Token classification, question answering and multiple choice heads against the reference (transformers), on tiny
random configs and the packaged MiniLM: logits on real tokens, losses, gradients; padding is never computed."""
import pytest
import torch

from tuneforge import (AutoModelForMultipleChoice, AutoModelForQuestionAnswering, AutoModelForTokenClassification,
                       AutoTokenizer)

transformers = pytest.importorskip("transformers")

from test_models import TINY  # noqa: E402

ENCODERS = TINY  # the encoder configs of the model tests
DECODERS = {
    "llama": dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0),
    "gpt2": dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0),
}
CLASSES = {"token": (transformers.AutoModelForTokenClassification, AutoModelForTokenClassification),
           "qa": (transformers.AutoModelForQuestionAnswering, AutoModelForQuestionAnswering),
           "choice": (transformers.AutoModelForMultipleChoice, AutoModelForMultipleChoice)}


def reference_model(model_type, task, folder, **extra):
    torch.manual_seed(0)
    values = {**ENCODERS, **DECODERS}[model_type]
    config = transformers.AutoConfig.for_model(model_type, **values, **extra)
    model = CLASSES[task][0].from_config(config).eval()
    model.save_pretrained(folder)
    return model, CLASSES[task][1].from_pretrained(folder).eval()


def padded_batch(pad_id, lengths=(7, 3, 12, 1), extra_padding=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + extra_padding
    ids, mask = torch.full((len(lengths), width), pad_id), torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens = torch.randint(3, 99, (n,), generator=g)
        tokens[tokens == pad_id] = 5
        ids[row, :n], mask[row, :n] = tokens, 1
    return ids, mask


@pytest.mark.parametrize("model_type", sorted(ENCODERS) + sorted(DECODERS))
def test_token_classification_logits_loss_and_gradients_match_reference(model_type, tmp_path):
    no_dropout = (dict(dropout=0.0, attention_dropout=0.0) if model_type == "distilbert" else
                  dict(classifier_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0) if model_type == "gpt2"
                  else dict(classifier_dropout=0.0) if model_type == "llama" else
                  dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ref, ours = reference_model(model_type, "token", tmp_path, num_labels=5, **no_dropout)
    ids, mask = padded_batch(ref.config.pad_token_id)
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(2))
    labels[mask == 0] = -100
    labels[0, 2] = -100  # a word's later sub-token
    ref.train(), ours.train()
    expected = ref(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours(ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    assert got.logits.shape == expected.logits.shape
    torch.testing.assert_close(got.logits[real], expected.logits[real], atol=1e-5, rtol=1e-4)
    assert torch.all(got.logits[~real] == 0), "padding positions are never computed"
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-6, rtol=1e-5)
    expected.loss.backward()
    got.loss.backward()
    reference = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is not None or reference[name].grad is not None:
            torch.testing.assert_close(p.grad, reference[name].grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_question_answering_logits_and_loss_match_reference(model_type, tmp_path):
    ref, ours = reference_model(model_type, "qa", tmp_path)
    # Unpadded, the loss is the reference's to the bit; an answer outside the input (>= T) is ignored.
    ids, mask = padded_batch(ref.config.pad_token_id, lengths=(9, 9, 9), extra_padding=0)
    starts, ends = torch.tensor([0, 3, 20]), torch.tensor([0, 5, 25])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
        got = ours(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    torch.testing.assert_close(got.start_logits, expected.start_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.end_logits, expected.end_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-6, rtol=1e-5)
    # Padded: the same logits on real tokens; padding takes no probability (lowest value), and the loss is the
    # reference's cross-entropy over each row's real tokens.
    ids, mask = padded_batch(ref.config.pad_token_id)
    starts, ends = torch.tensor([1, 0, 4, 0]), torch.tensor([3, 2, 11, 0])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask)
        got = ours(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    real = mask.bool()
    for name in ("start_logits", "end_logits"):
        torch.testing.assert_close(got[name][real], expected[name][real], atol=1e-5, rtol=1e-4)
        assert torch.all(got[name][~real] == torch.finfo(torch.float32).min)
    masked = {k: expected[k].masked_fill(~real, -1e30) for k in ("start_logits", "end_logits")}
    want = (torch.nn.functional.cross_entropy(masked["start_logits"], starts)
            + torch.nn.functional.cross_entropy(masked["end_logits"], ends)) / 2
    torch.testing.assert_close(got.loss, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_multiple_choice_logits_and_loss_match_reference(model_type, tmp_path):
    ref, ours = reference_model(model_type, "choice", tmp_path)
    ids, mask = padded_batch(ref.config.pad_token_id, lengths=(7, 3, 12, 5, 9, 2))
    ids, mask = ids.view(2, 3, -1), mask.view(2, 3, -1)  # 2 questions x 3 choices
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask, labels=labels)
    assert got.logits.shape == (2, 3)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir)


def test_minilm_token_classification_and_question_answering_match_reference(minilm_dir, minilm_pair):
    tokenizer = minilm_pair[1]
    words = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."], ["Peter", "Blackburn"]]
    batch = tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    ref = transformers.AutoModelForTokenClassification.from_pretrained(minilm_dir, num_labels=9).eval()
    ours = AutoModelForTokenClassification.from_pretrained(minilm_dir, num_labels=9).eval()
    ours.classifier.load_state_dict(ref.classifier.state_dict())
    labels = torch.where(batch["attention_mask"].bool(), torch.arange(batch["input_ids"].shape[1]) % 9, -100)
    with torch.no_grad():
        expected, got = ref(**batch, labels=labels), ours(**batch, labels=labels)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got.logits[real], expected.logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)

    batch = tokenizer(["Who was rejected?", "What?"], ["The EU rejected German calls.", "Lamb."], padding=True,
                      return_tensors="pt")
    ref = transformers.AutoModelForQuestionAnswering.from_pretrained(minilm_dir).eval()
    ours = AutoModelForQuestionAnswering.from_pretrained(minilm_dir).eval()
    ours.qa_outputs.load_state_dict(ref.qa_outputs.state_dict())
    with torch.no_grad():
        expected, got = ref(**batch), ours(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got.start_logits[real], expected.start_logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.end_logits[real], expected.end_logits[real], atol=1e-4, rtol=1e-4)


def test_saved_heads_load_in_the_reference(tmp_path):
    _, ours = reference_model("bert", "token", tmp_path / "a", num_labels=3)
    ours.save_pretrained(tmp_path / "b")
    back = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "b").eval()
    ids, mask = padded_batch(0, extra_padding=0, lengths=(6, 6))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits, back(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-4)
    assert type(back).__name__ == "BertForTokenClassification"
