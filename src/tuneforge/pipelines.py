"""pipeline(task, model=, tokenizer=): inference with the reference's inputs, arguments and output shapes.

    classifier = pipeline("text-classification", model="out/checkpoint-500")
    classifier(["great film", "dull"], top_k=None)          # [[{"label", "score"}, ...], ...]
    ner = pipeline("ner", model=folder, aggregation_strategy="simple")
    qa = pipeline("question-answering", model=folder)
    qa(question="Who?", context="...")                       # {"score", "start", "end", "answer"}
    generator = pipeline("text-generation", model=folder)
    generator([{"role": "user", "content": "Hi"}], max_new_tokens=20)

Each call tokenizes all its inputs, sorts the rows by length and runs them in batches of `batch_size` similar-length
rows (the models never compute on padding, so batching costs nothing in results and saves the per-call overhead).
The post-processing rules (scores, entity grouping, answer spans, generation defaults) are the reference's: see
transformers' pipelines/{text_classification,token_classification,text_generation}.py and, for question answering
(which Transformers 5 removed), Transformers 4's pipelines/question_answering.py.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
# task -> the model head it needs (models/registry.py task names)
TASK_HEADS = {"text-classification": "sequence_classification", "token-classification": "token_classification",
              "question-answering": "question_answering", "text-generation": "causal_lm"}
HEAD_AUTO_CLASS = {"sequence_classification": "AutoModelForSequenceClassification",
                   "token_classification": "AutoModelForTokenClassification",
                   "question_answering": "AutoModelForQuestionAnswering", "causal_lm": "AutoModelForCausalLM",
                   "multiple_choice": "AutoModelForMultipleChoice", "masked_lm": "AutoModelForMaskedLM",
                   "base": "AutoModel"}
# pipeline() keywords that go to from_pretrained when model is a folder
LOAD_KEYWORDS = ("revision", "token", "dtype", "torch_dtype", "device_map", "trust_remote_code", "cache_dir",
                 "local_files_only")
DEFAULT_BATCH_SIZE = 8  # the reference's is 1; with no padding compute a batch of similar-length rows is free


def pipeline(task: str, model=None, tokenizer=None, device=None, batch_size: int | None = None,
             model_kwargs: dict | None = None, **kwargs):
    """A ready pipeline for `task` ("text-classification"/"sentiment-analysis", "token-classification"/"ner",
    "question-answering", "text-generation"). `model`: a checkpoint folder (or hub name) or a loaded model;
    `tokenizer`: a folder or a tokenizer (default: the model's folder). Other keywords are the task's call
    arguments (top_k=, aggregation_strategy=, max_new_tokens=, ...), used by every call unless a call overrides them,
    or loading options (revision=, token=, dtype=, device_map=)."""
    name = TASK_ALIASES.get(task, task)
    if name not in PIPELINES:
        supported = sorted(set(PIPELINES) | set(TASK_ALIASES))
        raise InputError(f"unknown pipeline task {task!r}; supported: {', '.join(supported)}")
    if model is None:
        raise InputError(f"pipeline({task!r}) needs model=: a checkpoint folder or a loaded model (tuneforge does "
                         "not download a default model)")
    load_options = {**(model_kwargs or {}), **{k: kwargs.pop(k) for k in LOAD_KEYWORDS if k in kwargs}}
    if load_options.get("trust_remote_code"):
        raise InputError("pipeline(trust_remote_code=True) is not supported: checkpoints never run their own code")
    load_options.pop("trust_remote_code", None)
    head = TASK_HEADS[name]
    if isinstance(model, (str, Path)):
        folder = model
        model = _load_model(name, head, model, load_options)
    else:
        if load_options:
            raise InputError(f"pipeline(): {', '.join(sorted(load_options))} only apply when model is a folder; "
                             "this model is already loaded")
        folder = getattr(getattr(model, "config", None), "name_or_path", None)
        has = _head_of(model)
        if has != head:
            raise InputError(f"pipeline({task!r}) needs a {_describe(head)} model, but this "
                             f"{type(model).__name__} has a {_describe(has)} head; load the checkpoint with "
                             f"{HEAD_AUTO_CLASS[head]}.from_pretrained(folder)")
    if tokenizer is None:
        if not folder:
            raise InputError(f"pipeline({task!r}): pass tokenizer= (the model was not loaded from a folder)")
        tokenizer = folder
    if isinstance(tokenizer, (str, Path)):
        from .tokenizer import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if device is not None:
        model.to(_device(device))
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return PIPELINES[name](model, tokenizer, batch_size or DEFAULT_BATCH_SIZE, kwargs)


def _device(device) -> torch.device:
    if isinstance(device, int):
        return torch.device("cpu") if device < 0 else torch.device("cuda", device)
    return torch.device(device)


def _head_of(model) -> str:
    """The task name (registry.TASKS) of a loaded model's class."""
    from .models.registry import MODEL_TYPES
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's model
    family = MODEL_TYPES.get(getattr(getattr(inner, "config", None), "model_type", None))
    for task, cls in (family.tasks.items() if family else ()):
        if type(inner) is cls:
            return task
    return f"unknown ({type(inner).__name__})"


def _describe(head: str) -> str:
    return head.replace("_", " ").replace("causal lm", "causal language modelling")


def _load_model(task: str, head: str, folder, options: dict):
    from . import models
    from .models.registry import MODEL_TYPES
    config_file = Path(folder) / "config.json"
    if config_file.is_file():
        # A checkpoint saved with another head would load here with a new, random head: refuse it instead.
        import json
        values = json.loads(config_file.read_text(encoding="utf-8"))
        family = MODEL_TYPES.get(values.get("model_type"))
        saved = {cls.__name__: t for t, cls in family.tasks.items()} if family else {}
        for architecture in values.get("architectures") or ():
            has = saved.get(architecture)
            if has not in (None, "base", head):
                raise InputError(f"pipeline({task!r}) needs a {_describe(head)} model, but {config_file} is a "
                                 f"{architecture} ({_describe(has)} head)")
    return getattr(models, HEAD_AUTO_CLASS[head]).from_pretrained(folder, **options)


# ---------------------------------------------------------------------------------------------------- base


class Pipeline:
    """Holds the model, the tokenizer and the arguments given to pipeline(); a call merges its own arguments."""
    task = ""
    parameters: tuple[str, ...] = ()

    def __init__(self, model, tokenizer, batch_size: int, defaults: dict):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self._check(defaults)
        self.defaults = defaults

    def _check(self, params: dict) -> None:
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise TypeError(f"{self.task} pipeline: unexpected argument(s) {', '.join(unknown)}; it takes "
                            f"{', '.join(self.parameters)}")

    def _params(self, call: dict) -> dict:
        self._check(call)
        return {**self.defaults, **call}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _run(self, rows: list[dict], per_token: bool) -> list[dict]:
        """Encoded rows (lists of ids, no padding) -> each row's model outputs as numpy (per_token: the real tokens'
        only), computed in batches of similar-length rows."""
        names = ("input_ids", "attention_mask", "token_type_ids")
        wanted = [n for n in names if n == "input_ids" or n in self.tokenizer.model_input_names]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        outputs: list = [None] * len(rows)
        for begin in range(0, len(order), self.batch_size):
            chunk = order[begin:begin + self.batch_size]
            batch = _pad([rows[i] for i in chunk], wanted, self.tokenizer.pad_token_id, self.device)
            with torch.inference_mode():
                out = self.model(**batch)
            for j, i in enumerate(chunk):
                n = len(rows[i]["input_ids"])
                outputs[i] = {key: (value[j, :n] if per_token else value[j]).float().cpu().numpy()
                              for key, value in out.items() if isinstance(value, torch.Tensor) and key != "loss"}
        return outputs


def _pad(rows: list[dict], names, pad_id, device) -> dict:
    """Right-padded (B, T) tensors of the rows' inputs; attention_mask marks the real tokens."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {}
    for name in names:
        fill = (pad_id or 0) if name == "input_ids" else 0
        values = [list(r[name]) if name in r else [1] * len(r["input_ids"]) for r in rows]
        batch[name] = torch.tensor([v + [fill] * (width - len(v)) for v in values], device=device)
    return batch


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------- text classification


class TextClassificationPipeline(Pipeline):
    task = "text-classification"
    parameters = ("top_k", "function_to_apply", "truncation", "max_length")
    functions = {"sigmoid": _sigmoid, "softmax": _softmax, "none": lambda x: x}

    def __call__(self, inputs, **kwargs):
        params = self._params(kwargs)
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        rows = [self._encode(item, params) for item in items]
        logits = [out["logits"] for out in self._run(rows, per_token=False)]
        legacy = "top_k" not in params  # no top_k anywhere: one {"label", "score"} per input
        results = [self._scores(row, params, legacy) for row in logits]
        if single:
            # The reference's odd shape: a lone string without top_k in the call gives a list around its result.
            return [results[0]] if isinstance(inputs, str) and "top_k" not in kwargs else results[0]
        return results

    def _encode(self, item, params) -> dict:
        options = {k: params[k] for k in ("truncation", "max_length") if k in params}
        if isinstance(item, dict):
            unknown = set(item) - {"text", "text_pair"}
            if "text" not in item or unknown:
                raise InputError(f"a text pair is {{'text': ..., 'text_pair': ...}}, got keys {sorted(item)}")
            return self.tokenizer(item["text"], item.get("text_pair"), **options)
        if not isinstance(item, str):
            raise InputError("The pipeline received invalid inputs, if you are trying to send text pairs, you can "
                             'try to send a dictionary `{"text": "My text", "text_pair": "My pair"}` in order to '
                             "send a text pair.")
        return self.tokenizer(item, **options)

    def _function(self, params):
        name = params.get("function_to_apply")
        if name is None:
            config = self.model.config
            if config.problem_type == "regression":
                return self.functions["none"]
            if config.problem_type == "multi_label_classification" or config.num_labels == 1:
                return self.functions["sigmoid"]
            return self.functions["softmax"]
        name = getattr(name, "value", name)
        if not isinstance(name, str) or name.lower() not in self.functions:
            raise InputError(f"function_to_apply={name!r}: use 'sigmoid', 'softmax' or 'none'")
        return self.functions[name.lower()]

    def _scores(self, logits: np.ndarray, params: dict, legacy: bool):
        scores = self._function(params)(logits)
        id2label = self.model.config.id2label
        top_k = params.get("top_k", 1)
        if legacy:
            return {"label": id2label[int(scores.argmax())], "score": scores.max().item()}
        ranked = sorted(({"label": id2label[i], "score": s.item()} for i, s in enumerate(scores)),
                        key=lambda d: d["score"], reverse=True)
        if top_k is not None and not isinstance(top_k, int):
            raise InputError(f"top_k must be an integer or None (all labels), got {top_k!r}")
        return ranked if top_k is None else ranked[:top_k]


# --------------------------------------------------------------------------------------- token classification

AGGREGATIONS = ("none", "simple", "first", "average", "max")


class TokenClassificationPipeline(Pipeline):
    task = "token-classification"
    parameters = ("aggregation_strategy", "ignore_labels", "is_split_into_words", "stride", "delimiter")

    def __call__(self, inputs, **kwargs):
        params = self._params(kwargs)
        strategy = params.get("aggregation_strategy") or "none"
        strategy = str(getattr(strategy, "value", strategy)).lower()
        if strategy not in AGGREGATIONS:
            raise InputError(f"aggregation_strategy={params['aggregation_strategy']!r}: use one of "
                             f"{', '.join(AGGREGATIONS)}")
        split = bool(params.get("is_split_into_words", False))
        stride = params.get("stride")
        if stride is not None:
            if stride >= self.tokenizer.model_max_length:
                raise InputError("`stride` must be less than `tokenizer.model_max_length` (or even lower if the "
                                 "tokenizer adds special tokens)")
            if strategy == "none":
                raise InputError('`stride` was provided to process all the text but `aggregation_strategy="none"`, '
                                 "please select another one instead.")
        single = isinstance(inputs, str)
        # One list of words is one input, whose result still comes in a list (the reference's shape).
        one_word_list = split and isinstance(inputs, list) and all(isinstance(w, str) for w in inputs)
        items = [inputs] if single or one_word_list else list(inputs)
        if not items:
            raise InputError("At least one input is required.")
        delimiter = " " if params.get("delimiter") is None else params["delimiter"]
        chunks, owners, sentences = [], [], []
        for n, item in enumerate(items):
            sentence, pieces = self._encode(item, split, delimiter, stride)
            sentences.append(sentence)
            chunks += pieces
            owners += [n] * len(pieces)
        logits = self._run(chunks, per_token=True)
        ignore = ["O"] if params.get("ignore_labels") is None else params["ignore_labels"]
        results = [[] for _ in items]
        counts = [owners.count(n) for n in range(len(items))]
        for chunk, out, n in zip(chunks, logits, owners):
            scores = _softmax(out["logits"])
            entities = self._aggregate(self._pre_entities(sentences[n], chunk, scores, strategy), strategy)
            results[n] += [e for e in entities if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
        results = [_merge_overlapping(r) if counts[n] > 1 else r for n, r in enumerate(results)]
        return results[0] if single else results

    def _encode(self, item, split: bool, delimiter: str, stride):
        options = dict(truncation=bool(self.tokenizer.model_max_length and self.tokenizer.model_max_length > 0),
                       return_special_tokens_mask=True, return_offsets_mapping=True)
        if stride is not None:
            options.update(return_overflowing_tokens=True, stride=stride)
        word_chars = None
        if split:
            if not isinstance(item, list):
                raise InputError("When `is_split_into_words=True`, `sentence` must be a list of tokens.")
            sentence, word_chars, position = delimiter.join(item), [], 0
            for word in item:  # each word's characters in the joined sentence
                word_chars.append((position, position + len(word)))
                position += len(word) + len(delimiter)
            encoded = self.tokenizer([item], is_split_into_words=True, **options)
        else:
            if not isinstance(item, str):
                raise InputError("When `is_split_into_words=False`, `sentence` must be an untokenized string.")
            sentence, encoded = item, self.tokenizer([item], **options)
        pieces = []
        for i in range(len(encoded["input_ids"])):  # one row, or the windows of a long text (stride)
            piece = {k: v[i] for k, v in encoded.items() if k != "overflow_to_sample_mapping"}
            if word_chars is not None:
                piece["word_ids"], piece["word_chars"] = encoded.word_ids(i), word_chars
            pieces.append(piece)
        return sentence, pieces

    def _pre_entities(self, sentence: str, chunk: dict, scores: np.ndarray, strategy: str) -> list[dict]:
        """One record per real token: its token, scores, characters and whether it continues a word."""
        backend = self.tokenizer.backend_tokenizer
        word_aware = bool(getattr(backend.model, "continuing_subword_prefix", None))
        if not word_aware and strategy in ("first", "average", "max"):
            warnings.warn("Tokenizer does not support real words, using fallback heuristic", UserWarning)
        records = []
        for idx, token_scores in enumerate(scores):
            if chunk["special_tokens_mask"][idx]:
                continue
            token_id = int(chunk["input_ids"][idx])
            word = self.tokenizer.convert_ids_to_tokens(token_id)
            start, end = chunk["offset_mapping"][idx]
            if "word_ids" in chunk and chunk["word_ids"][idx] is not None:
                shift = chunk["word_chars"][chunk["word_ids"][idx]][0]  # offsets are within the word
                start, end = start + shift, end + shift
            piece = sentence[start:end]
            if word_aware:
                is_subword = len(word) != len(piece)  # "##ing" is longer than "ing"
            else:
                is_subword = start > 0 and " " not in sentence[start - 1:start + 1]
            if token_id == self.tokenizer.unk_token_id:
                word, is_subword = piece, False
            records.append({"word": word, "scores": token_scores, "start": start, "end": end, "index": idx,
                            "is_subword": is_subword})
        return records

    def _aggregate(self, records: list[dict], strategy: str) -> list[dict]:
        id2label = self.model.config.id2label
        if strategy in ("none", "simple"):
            entities = []
            for r in records:
                best = int(r["scores"].argmax())
                entities.append({"entity": id2label[best], "score": r["scores"][best], "index": r["index"],
                                 "word": r["word"], "start": r["start"], "end": r["end"]})
            if strategy == "none":
                return entities
        else:
            words, group = [], []
            for r in records:  # tokens of one word share its label
                if group and not r["is_subword"]:
                    words.append(self._word(group, strategy))
                    group = []
                group.append(r)
            if group:
                words.append(self._word(group, strategy))
            entities = words
        return self._group(entities)

    def _word(self, tokens: list[dict], strategy: str) -> dict:
        id2label = self.model.config.id2label
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {"entity": id2label[best], "score": scores[best],
                "word": self.tokenizer.convert_tokens_to_string([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    def _group(self, entities: list[dict]) -> list[dict]:
        """Adjacent entities of one type join, unless the later one begins a new entity (B-)."""
        groups, current = [], []
        for entity in entities:
            if current:
                bi, tag = _bio(entity["entity"])
                if not (tag == _bio(current[-1]["entity"])[1] and bi != "B"):
                    groups.append(self._entity_group(current))
                    current = []
            current.append(entity)
        if current:
            groups.append(self._entity_group(current))
        return groups

    def _entity_group(self, entities: list[dict]) -> dict:
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": np.mean(np.nanmean([e["score"] for e in entities])),
                "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}


def _bio(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label  # no prefix: a continuation


def _merge_overlapping(entities: list[dict]) -> list[dict]:
    """Entities of overlapping windows (stride): of those that overlap, the longest (then the most likely) stays."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    kept, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            kept.append(previous)
            previous = entity
    kept.append(previous)
    return kept


# ---------------------------------------------------------------------------------------- question answering


class QuestionAnsweringPipeline(Pipeline):
    task = "question-answering"
    parameters = ("top_k", "doc_stride", "max_answer_len", "max_seq_len", "handle_impossible_answer", "align_to_words")

    def __call__(self, *args, question=None, context=None, **kwargs):
        params = self._params(kwargs)
        examples = _qa_examples(args, question, context)
        top_k = params.get("top_k", 1)
        max_answer_len = params.get("max_answer_len", 15)
        if top_k < 1:
            raise InputError(f"top_k parameter should be >= 1 (got {top_k})")
        if max_answer_len < 1:
            raise InputError(f"max_answer_len parameter should be >= 1 (got {max_answer_len}")
        max_seq_len = params.get("max_seq_len") or min(self.tokenizer.model_max_length, 384)
        doc_stride = params.get("doc_stride") or min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise InputError(f"`doc_stride` ({doc_stride}) is larger than `max_seq_len` ({max_seq_len})")
        question_first = self.tokenizer.padding_side == "right"
        windows, owners, encodings = [], [], []
        for n, (q, c) in enumerate(examples):
            encoded = self.tokenizer([q if question_first else c], [c if question_first else q], max_length=max_seq_len,
                                     truncation="only_second" if question_first else "only_first", stride=doc_stride,
                                     return_token_type_ids=True, return_overflowing_tokens=True,
                                     return_offsets_mapping=True)
            for i in range(len(encoded["input_ids"])):
                windows.append({k: encoded[k][i] for k in encoded if k != "overflow_to_sample_mapping"})
                encodings.append((encoded.encodings[i], encoded.sequence_ids(i)))
                owners.append(n)
        outputs = self._run(windows, per_token=True)
        results = []
        for n, (_, c) in enumerate(examples):
            mine = [i for i, owner in enumerate(owners) if owner == n]
            results.append(self._answers(c, [windows[i] for i in mine], [outputs[i] for i in mine],
                                         [encodings[i] for i in mine], top_k, max_answer_len,
                                         params.get("handle_impossible_answer", False),
                                         params.get("align_to_words", True), question_first))
        return results[0] if len(results) == 1 else results

    def _answers(self, context, windows, outputs, encodings, top_k, max_answer_len, impossible, align, question_first):
        null_score, answers = 1000000.0, []
        context_sequence = 1 if question_first else 0
        for window, out, (encoding, sequence_ids) in zip(windows, outputs, encodings):
            # Only context tokens (and [CLS], which some models use for "no answer") may hold the answer.
            allowed = np.array([(s == 1) if question_first else True for s in sequence_ids])
            if self.tokenizer.cls_token_id is not None:
                allowed |= np.array(window["input_ids"]) == self.tokenizer.cls_token_id
            start = _softmax(np.where(allowed, out["start_logits"], -10000.0))
            end = _softmax(np.where(allowed, out["end_logits"], -10000.0))
            if impossible:
                null_score = min(null_score, float(start[0] * end[0]))
            start[0] = end[0] = 0.0
            for s, e, score in _best_spans(start, end, top_k, max_answer_len, allowed):
                if align:
                    try:
                        first = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=context_sequence)[0]
                        last = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=context_sequence)[1]
                    except Exception:  # tokenizers without words: keep to the token offsets
                        first, last = encoding.offsets[s][0], encoding.offsets[e][1]
                else:
                    first, last = encoding.offsets[s][0], encoding.offsets[e][1]
                answers.append({"score": score.item(), "start": first, "end": last, "answer": context[first:last]})
        if impossible:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers


def _best_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int, allowed: np.ndarray):
    """The top_k spans by P(start) * P(end), end >= start and at most max_answer_len tokens, then those whose ends
    are both allowed (as the reference: filtered after choosing, so fewer than top_k can come back)."""
    spans = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)  # (T, T): [s, e] for s <= e < s + len
    flat = spans.ravel()
    if top_k == 1:
        best = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        best = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[:top_k]
        best = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(best, spans.shape)
    keep = allowed[starts] & allowed[ends]
    return [(int(s), int(e), spans[s, e]) for s, e in zip(starts[keep], ends[keep])]


def _qa_examples(args, question, context) -> list[tuple[str, str]]:
    """The reference's input forms: question=/context= (strings or lists), a dict {"question", "context"}, a list of
    such dicts, or (question, context) as two strings."""
    if args:
        if len(args) == 2 and all(isinstance(a, str) for a in args):
            items = [{"question": args[0], "context": args[1]}]
        else:
            items = args[0] if len(args) == 1 else list(args)
            items = [items] if isinstance(items, dict) else list(items)
    elif question is not None and context is not None:
        if isinstance(question, list) and isinstance(context, str):
            items = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise InputError("Questions and contexts don't have the same lengths")
            items = [{"question": q, "context": c} for q, c in zip(question, context)]
        elif isinstance(question, str) and isinstance(context, str):
            items = [{"question": question, "context": context}]
        else:
            raise InputError("question= and context= must be strings or lists of strings")
    else:
        raise InputError("question-answering takes question= and context= (or a dict {'question', 'context'})")
    examples = []
    for item in items:
        if not isinstance(item, dict):
            raise InputError(f"{item!r} argument needs to be a dict {{'question': ..., 'context': ...}}")
        for key in ("question", "context"):
            if key not in item:
                raise KeyError("You need to provide a dictionary with keys {question:..., context:...}")
            if item[key] is None or item[key] == "":
                raise InputError(f"`{key}` cannot be {'None' if item[key] is None else 'empty'}")
        examples.append((item["question"], item["context"]))
    return examples


# ------------------------------------------------------------------------------------------- text generation

# The reference pipeline's generation defaults, for what neither the call nor the model's generation config sets.
GENERATION_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
SAMPLING_ONLY = {"temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}


NOT_FOR_GENERATE = ("return_full_text", "return_text", "return_tensors", "clean_up_tokenization_spaces",
                    "skip_special_tokens", "continue_final_message", "prefix", "add_special_tokens", "truncation",
                    "max_length", "tokenizer_encode_kwargs", "generation_config")


class TextGenerationPipeline(Pipeline):
    task = "text-generation"
    parameters = NOT_FOR_GENERATE + ("max_new_tokens", "do_sample",
                  "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id", "bos_token_id",
                  "num_return_sequences", "num_beams", "repetition_penalty", "min_new_tokens", "min_length")

    def __init__(self, model, tokenizer, batch_size, defaults):
        super().__init__(model, tokenizer, batch_size, defaults)
        if not hasattr(model, "generate"):
            raise InputError(f"text-generation needs a model that generates; {type(model).__name__} does not")

    def __call__(self, inputs, **kwargs):
        params = self._params(kwargs)
        single = isinstance(inputs, str) or _is_chat(inputs)
        items = [inputs] if single else list(inputs)
        full_text = params.get("return_full_text", True)
        if "return_full_text" in params and ("return_text" in params or "return_tensors" in params):
            raise InputError("`return_full_text` is mutually exclusive with `return_text` and `return_tensors`")
        rows = [self._encode(item, params) for item in items]
        generate_kwargs = self._generate_kwargs(params)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        new_tokens: list = [None] * len(rows)
        for begin in range(0, len(order), self.batch_size):
            chunk = order[begin:begin + self.batch_size]
            batch = _pad([{"input_ids": rows[i]} for i in chunk], ("input_ids", "attention_mask"),
                         self.tokenizer.pad_token_id, self.device)
            out = self.model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs)
            width = batch["input_ids"].shape[1]
            for j, i in enumerate(chunk):
                new_tokens[i] = out[j, width:].tolist()
        results = [[self._record(item, rows[i], new_tokens[i], params, full_text)] for i, item in enumerate(items)]
        return results[0] if single else results

    def _encode(self, item, params) -> list[int]:
        options = {k: params[k] for k in ("add_special_tokens", "truncation", "max_length") if k in params}
        options.update(params.get("tokenizer_encode_kwargs") or {})
        if _is_chat(item):
            options.pop("add_special_tokens", None)  # the template writes the special tokens
            final = params.get("continue_final_message")
            final = item[-1]["role"] == "assistant" if final is None else final
            return list(self.tokenizer.apply_chat_template(list(item), add_generation_prompt=not final,
                                                           continue_final_message=final, return_dict=True,
                                                           **options)["input_ids"])
        if not isinstance(item, str):
            raise InputError(f"text-generation takes strings or chats (lists of {{'role', 'content'}} messages), got "
                             f"{type(item).__name__}")
        ids = list(self.tokenizer(params.get("prefix", "") + item, **options)["input_ids"])
        if not ids:
            raise InputError(f"the prompt {item!r} has no tokens")
        return ids

    def _generate_kwargs(self, params) -> dict:
        """The call's generation settings, plus the reference pipeline's defaults where neither they nor the model's
        generation config set a value (the sampling ones only when sampling)."""
        from .models.generation import IMPLEMENTED, OFF
        own = {k: params[k] for k in params if k not in NOT_FOR_GENERATE}
        config = params.get("generation_config") or self.model.generation_config
        if "max_length" in params:
            own["max_length"] = params["max_length"]
        set_ = {k: v for k, v in config.to_dict().items()
                if not k.startswith("_") and v != {**IMPLEMENTED, **OFF}.get(k, object())}
        set_.update(own)
        added = {k: v for k, v in GENERATION_DEFAULTS.items()
                 if k not in set_ and not (k == "max_new_tokens" and "max_length" in set_)}
        if self.tokenizer.pad_token_id is not None and "pad_token_id" not in set_:
            added["pad_token_id"] = self.tokenizer.pad_token_id
        if not {**set_, **added}.get("do_sample"):
            added = {k: v for k, v in added.items() if k not in SAMPLING_ONLY}
        kwargs = {**own, **added}
        if params.get("generation_config") is not None:
            kwargs["generation_config"] = params["generation_config"]
        return kwargs

    def _record(self, item, prompt_ids, new_ids, params, full_text) -> dict:
        if params.get("return_tensors"):
            return {"generated_token_ids": prompt_ids + new_ids}
        skip = params.get("skip_special_tokens", True)
        text = self.tokenizer.decode(new_ids, skip_special_tokens=skip,
                                     clean_up_tokenization_spaces=params.get("clean_up_tokenization_spaces"))
        if not full_text:
            return {"generated_text": text}
        if isinstance(item, str):
            return {"generated_text": item + text}
        final = params.get("continue_final_message")
        if item[-1]["role"] == "assistant" if final is None else final:
            last = item[-1]
            return {"generated_text": list(item[:-1]) + [{"role": last["role"], "content": last["content"] + text}]}
        return {"generated_text": list(item) + [{"role": "assistant", "content": text}]}


def _is_chat(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(m, dict) and "role" in m for m in value)


PIPELINES = {"text-classification": TextClassificationPipeline, "token-classification": TokenClassificationPipeline,
             "question-answering": QuestionAnsweringPipeline, "text-generation": TextGenerationPipeline}
