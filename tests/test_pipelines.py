"""pipeline(): every task's outputs against transformers.pipeline on tiny random models saved to folders (a WordPiece
encoder with MiniLM's tokenizer, a Llama with a small byte-level BPE tokenizer and a ChatML template), and on the
packaged MiniLM. Question answering, which Transformers 5 removed, is checked against its documented rule computed
here by brute force over the reference model's logits."""

import numpy as np
import pytest
import torch

from tuneforge import AutoModelForSequenceClassification, pipeline

transformers = pytest.importorskip("transformers")

NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=128, type_vocab_size=2)
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SENTENCES = ["John Smith lives in New York.", "Angela Merkel visited Washingtonville yesterday!",
             "short", "The unbelievably long-winded discussion in Paris ended with Marie Curie's speech."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from torch's second thread, and on a shared machine each op waits for it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes():
    """Pipelines built once per (library, task, folder, options) and shared by the tests: loading the folders costs
    more than running these tiny models."""
    cache = {}

    def get(library, task, folder, **options):
        key = (library, task, str(folder), tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = (transformers.pipeline(task, model=str(folder), **options) if library == "reference"
                          else pipeline(task, model=folder, **options))
        return cache[key]
    return get


def save_reference(folder, model_class, config, tokenizer_source):
    torch.manual_seed(0)
    model = model_class.from_config(config).eval()
    with torch.no_grad():  # confident, varied predictions so that entity grouping has work to do
        for name, p in model.named_parameters():
            if name.startswith(("classifier.", "score.", "qa_outputs.")):
                p.mul_(40)
    model.save_pretrained(folder)
    tokenizer_source.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wordpiece(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(SENTENCES * 4 + ["user assistant hello world tell me a story"], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
                                                chat_template=CHATML)


def bert_config(**extra):
    return transformers.AutoConfig.for_model("bert", **BERT, **extra)


def llama_config(tokenizer, **extra):
    return transformers.AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
        eos_token_id=tokenizer.eos_token_id, **extra)


@pytest.fixture(scope="module")
def classifier_dirs(tmp_path_factory, wordpiece):
    root = tmp_path_factory.mktemp("classifiers")
    cls = transformers.AutoModelForSequenceClassification
    return {"softmax": save_reference(root / "softmax", cls, bert_config(num_labels=3), wordpiece),
            "one_label": save_reference(root / "one", cls, bert_config(num_labels=1), wordpiece),
            "multi_label": save_reference(root / "multi", cls, bert_config(
                num_labels=3, problem_type="multi_label_classification"), wordpiece)}


@pytest.fixture(scope="module")
def ner_dirs(tmp_path_factory, wordpiece, bpe):
    root = tmp_path_factory.mktemp("ner")
    cls = transformers.AutoModelForTokenClassification
    return {"wordpiece": save_reference(root / "bert", cls, bert_config(id2label=NER_LABELS), wordpiece),
            "bpe": save_reference(root / "llama", cls, llama_config(bpe, id2label=NER_LABELS), bpe)}


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, bpe):
    return save_reference(tmp_path_factory.mktemp("lm"), transformers.AutoModelForCausalLM, llama_config(bpe), bpe)


def same(got, expected, path="result"):
    """Equal structure, keys, strings and ints; scores within float tolerance."""
    assert type(got) in (type(expected), np.float32, float) or isinstance(got, type(expected)), (path, got, expected)
    if isinstance(expected, dict):
        assert list(got) == list(expected), (path, got, expected)
        for key in expected:
            same(got[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(got) == len(expected), (path, got, expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            same(g, e, f"{path}[{i}]")
    elif isinstance(expected, (float, np.floating)):
        assert abs(float(got) - float(expected)) < 1e-4, (path, got, expected)
    else:
        assert got == expected, (path, got, expected)


# ---- text classification ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["softmax", "one_label", "multi_label"])
def test_text_classification_matches_the_reference(kind, classifier_dirs, pipes):
    folder = classifier_dirs[kind]
    ref, ours = pipes("reference", "text-classification", folder), pipes("ours", "sentiment-analysis", folder)
    pair = {"text": "Is it good?", "text_pair": "It was a fine film."}
    every = ({}, {"top_k": None}, {"top_k": 2}, {"top_k": 1}, {"function_to_apply": "none"})
    for inputs in (SENTENCES[0], SENTENCES, pair):
        for options in every if kind == "softmax" else every[:2]:
            same(ours(inputs, **options), ref(inputs, **options), f"{kind} {inputs!r} {options}")
    # top_k given to pipeline() rather than to the call: the reference's shapes for that too
    same(pipeline("text-classification", model=folder, top_k=None)(SENTENCES[0]),
         transformers.pipeline("text-classification", model=str(folder), top_k=None)(SENTENCES[0]))


def test_batches_sorted_by_length_give_each_input_its_own_result(classifier_dirs, pipes):
    texts = [SENTENCES[i % 4] * (1 + i % 3) for i in range(11)]
    one = pipes("ours", "text-classification", classifier_dirs["softmax"], batch_size=1)(texts, top_k=None)
    batched = pipes("ours", "text-classification", classifier_dirs["softmax"], batch_size=4)(texts, top_k=None)
    same(batched, one)


def test_text_classification_on_the_packaged_minilm(minilm_dir, wordpiece):
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    ref = transformers.pipeline("text-classification", model=model, tokenizer=wordpiece)
    ours_model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    ours_model.classifier.load_state_dict(model.classifier.state_dict())  # the same fresh head
    ours = pipeline("text-classification", model=ours_model, tokenizer=minilm_dir)
    same(ours(SENTENCES, top_k=None), ref(SENTENCES, top_k=None))


# ---- token classification --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer_kind", ["wordpiece", "bpe"])
def test_token_classification_matches_the_reference_for_every_aggregation(tokenizer_kind, ner_dirs, pipes):
    folder = ner_dirs[tokenizer_kind]
    ref, ours = pipes("reference", "token-classification", folder), pipes("ours", "ner", folder)
    with _quiet():
        for strategy in ("none", "simple", "first", "average", "max"):
            for options in ({"ignore_labels": []},) + (({},) if strategy == "simple" else ()):
                expected = ref(SENTENCES, aggregation_strategy=strategy, **options)
                got = ours(SENTENCES, aggregation_strategy=strategy, **options)
                same(got, expected, f"{strategy} {options}")
        assert any(len(entities) > 1 for entities in expected), "the grouping rules were exercised"
        words = SENTENCES[0].rstrip(".").split()
        same(ours(words, is_split_into_words=True, aggregation_strategy="first"),
             ref(words, is_split_into_words=True, aggregation_strategy="first"))


def test_long_texts_run_in_overlapping_windows_as_the_reference(ner_dirs):
    folder = ner_dirs["wordpiece"]
    ref = transformers.pipeline("token-classification", model=str(folder))
    ours = pipeline("token-classification", model=folder)
    ref.tokenizer.model_max_length = ours.tokenizer.model_max_length = 12
    text = " ".join(SENTENCES)
    for strategy in ("simple", "max"):
        same(ours(text, stride=4, aggregation_strategy=strategy, ignore_labels=[]),
             ref(text, stride=4, aggregation_strategy=strategy, ignore_labels=[]))
    with pytest.raises(ValueError, match="aggregation_strategy"):
        ours(text, stride=4)


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# ---- question answering ----------------------------------------------------------------------------------------

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
           "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.")


def brute_force_answers(ref_model, tokenizer, question, context, max_seq_len, stride, top_k, max_answer_len,
                        impossible):
    """The reference QA pipeline's rule, written out: in each window, softmax over the context tokens (and [CLS]),
    every span end >= start of at most max_answer_len tokens scored P(start) * P(end), answers widened to whole
    words; the null answer is the least P([CLS])^2 over the windows."""
    enc = tokenizer(question, context, max_length=max_seq_len, truncation="only_second", stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    answers, null = [], 1e6
    for i, ids in enumerate(enc["input_ids"]):
        with torch.no_grad():
            out = ref_model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"][i]]))
        ok = [s == 1 or t == tokenizer.cls_token_id for s, t in zip(enc.sequence_ids(i), ids)]
        probs = [torch.where(torch.tensor(ok), x[0], -10000.0).softmax(-1).numpy()
                 for x in (out.start_logits, out.end_logits)]
        null = min(null, float(probs[0][0] * probs[1][0]))
        probs[0][0] = probs[1][0] = 0
        spans = sorted(((probs[0][s] * probs[1][e], s, e) for s in range(len(ids)) for e in range(s, len(ids))
                        if e - s < max_answer_len), reverse=True)[:top_k]
        encoding = enc.encodings[i]
        for score, s, e in spans:
            if ok[s] and ok[e]:
                a = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                b = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
                answers.append({"score": float(score), "start": a, "end": b, "answer": context[a:b]})
    if impossible:
        answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
    return answers[0] if len(answers) == 1 else answers


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory, wordpiece):
    return save_reference(tmp_path_factory.mktemp("qa"), transformers.AutoModelForQuestionAnswering, bert_config(),
                          wordpiece)


@pytest.fixture(scope="module")
def qa_reference_model(qa_dir):
    return transformers.AutoModelForQuestionAnswering.from_pretrained(qa_dir).eval()


@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"max_seq_len": 32, "doc_stride": 8, "top_k": 2},
                                     {"max_seq_len": 40, "doc_stride": 16, "handle_impossible_answer": True},
                                     {"max_answer_len": 2, "top_k": 4}])
def test_question_answering_follows_the_reference_rule(options, qa_dir, qa_reference_model, wordpiece, pipes):
    ref_model = qa_reference_model
    qa = pipes("ours", "question-answering", qa_dir)
    question = "Where is Normandy?"
    expected = brute_force_answers(ref_model, wordpiece, question, CONTEXT, options.get("max_seq_len", 384),
                                   options.get("doc_stride", min(options.get("max_seq_len", 384) // 2, 128)),
                                   options.get("top_k", 1), options.get("max_answer_len", 15),
                                   options.get("handle_impossible_answer", False))
    same(qa(question=question, context=CONTEXT, **options), expected)
    # the other input forms, and several examples at once
    same(qa({"question": question, "context": CONTEXT}, **options), expected)
    same(qa(question=[question, question], context=CONTEXT, **options), [expected, expected])


# ---- text generation -------------------------------------------------------------------------------------------


def test_greedy_generation_matches_the_reference(lm_dir, pipes):
    ref, ours = pipes("reference", "text-generation", lm_dir), pipes("ours", "text-generation", lm_dir, batch_size=2)
    chat = [{"role": "user", "content": "tell me a story"}]
    continued = chat + [{"role": "assistant", "content": "hello"}]
    # Every input form, and both return_full_text settings on a text and on chats (4 new tokens: the prompt's
    # pass and three cached steps).
    for inputs, options in (("hello world", {}), ("hello world", {"return_full_text": False}),
                            (["hello", "tell me a story about New York", "user"], {}),
                            (chat, {"return_full_text": False}), ([chat, continued], {})):
        same(ours(inputs, do_sample=False, max_new_tokens=4, **options),
             ref(inputs, do_sample=False, max_new_tokens=4, **options), f"{inputs!r} {options}")


def test_generation_uses_the_reference_pipeline_defaults(lm_dir, monkeypatch):
    ours = pipeline("text-generation", model=lm_dir)  # its own: generate is replaced below
    seen = {}

    def generate(input_ids, attention_mask=None, **kwargs):
        seen.update(kwargs)
        return torch.cat([input_ids, input_ids[:, :2]], 1)

    monkeypatch.setattr(ours.model, "generate", generate)
    out = ours("hello")
    # (pad_token_id: the tokenizer's is added only when the model's generation config has none; this one has 0)
    assert seen == {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
    assert list(out[0]) == ["generated_text"] and out[0]["generated_text"].startswith("hello")
    seen.clear()
    ours("hello", do_sample=False, max_length=30)
    assert seen == {"do_sample": False, "max_length": 30}, "no sampling defaults when greedy"


# ---- bad input -------------------------------------------------------------------------------------------------


def test_unknown_task_and_a_mismatched_head_are_one_clear_line(classifier_dirs, ner_dirs):
    with pytest.raises(ValueError, match=r"unknown pipeline task 'summarization'; supported: .*ner.*"
                                         r"question-answering.*text-generation"):
        pipeline("summarization", model=classifier_dirs["softmax"])
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dirs["softmax"])
    with pytest.raises(ValueError, match="needs a token classification model, but this BertForSequenceClassification "
                                         "has a sequence classification head"):
        pipeline("ner", model=model, tokenizer=classifier_dirs["softmax"])
    with pytest.raises(ValueError, match=r"needs a question answering model, but .*config.json is a "
                                         r"BertForTokenClassification \(token classification head\)"):
        pipeline("question-answering", model=ner_dirs["wordpiece"])
    with pytest.raises(TypeError, match="unexpected argument.*aggregation_strategy"):
        pipeline("text-classification", model=model, tokenizer=classifier_dirs["softmax"])("x",
                                                                                           aggregation_strategy="max")
