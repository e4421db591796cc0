"""MODEL_TYPES: config.json "model_type" -> its family's spec. Everything generic code needs to know about a family
(CLI, checkpoint loading, FSDP, activation checkpointing) it asks here; adding a family is a file and an entry."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from ..checkpoint_io import CheckpointError
from . import bert, distilbert, gpt2, llama
from .config import TASK_DEFAULTS, Config

TASKS = ("base", "sequence_classification", "causal_lm", "masked_lm", "token_classification", "question_answering",
         "multiple_choice")


@dataclass(frozen=True)
class FamilySpec:
    defaults: dict
    tasks: dict[str, type]  # task (TASKS) -> model class
    blocks: str  # the ModuleList of transformer blocks, from the base model
    input_embeddings: str  # the token embedding, from the base model
    renames: dict[str, str] = field(default_factory=dict)  # literal checkpoint-key renames: old suffix -> ours
    ignored_keys: re.Pattern | None = None  # checkpoint buffers we compute on the fly: dropped without a warning
    position_limit: Callable[[Config], int] = lambda c: c.max_position_embeddings
    check: Callable[[Config], None] = lambda c: None  # refuses config options the family does not implement


_BERT_KEYS = dict(renames={"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"},
                  ignored_keys=re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$"))
_BERT_TASKS = {"base": bert.BertModel, "sequence_classification": bert.BertForSequenceClassification,
               "masked_lm": bert.BertForMaskedLM,
               "token_classification": bert.BertForTokenClassification,
               "question_answering": bert.BertForQuestionAnswering, "multiple_choice": bert.BertForMultipleChoice}
_ROBERTA_TASKS = {"base": bert.RobertaModel, "sequence_classification": bert.RobertaForSequenceClassification,
                  "token_classification": bert.RobertaForTokenClassification,
                  "question_answering": bert.RobertaForQuestionAnswering,
                  "multiple_choice": bert.RobertaForMultipleChoice}
_LLAMA_TASKS = {"base": llama.LlamaModel, "sequence_classification": llama.LlamaForSequenceClassification,
                "causal_lm": llama.LlamaForCausalLM, "token_classification": llama.LlamaForTokenClassification}
_LLAMA = dict(blocks="layers", input_embeddings="embed_tokens", ignored_keys=re.compile(r"rotary_emb\.inv_freq$"),
              check=llama.check_config)

MODEL_TYPES = {
    "bert": FamilySpec(bert.BERT_DEFAULTS, _BERT_TASKS, "encoder.layer", "embeddings.word_embeddings", **_BERT_KEYS),
    # RoBERTa numbers positions from pad_token_id + 1 (fairseq's convention), so fewer of them are usable.
    "roberta": FamilySpec(bert.ROBERTA_DEFAULTS, _ROBERTA_TASKS, "encoder.layer", "embeddings.word_embeddings",
                          position_limit=lambda c: c.max_position_embeddings - (c.pad_token_id or 0) - 1, **_BERT_KEYS),
    "xlm-roberta": FamilySpec(bert.XLM_ROBERTA_DEFAULTS, _ROBERTA_TASKS, "encoder.layer", "embeddings.word_embeddings",
                              position_limit=lambda c: c.max_position_embeddings - (c.pad_token_id or 0) - 1,
                              **_BERT_KEYS),
    "distilbert": FamilySpec(distilbert.DISTILBERT_DEFAULTS,
                             {"base": distilbert.DistilBertModel,
                              "sequence_classification": distilbert.DistilBertForSequenceClassification,
                              "token_classification": distilbert.DistilBertForTokenClassification,
                              "question_answering": distilbert.DistilBertForQuestionAnswering,
                              "multiple_choice": distilbert.DistilBertForMultipleChoice},
                             "transformer.layer", "embeddings.word_embeddings"),
    # Question answering: the reference names the backbone `transformer` for Llama, Qwen2, Qwen3, `model` for Mistral.
    "llama": FamilySpec(llama.LLAMA_DEFAULTS, {**_LLAMA_TASKS, "question_answering": llama.LlamaForQuestionAnswering},
                        **_LLAMA),
    "mistral": FamilySpec(llama.MISTRAL_DEFAULTS,
                          {**_LLAMA_TASKS, "question_answering": llama.MistralForQuestionAnswering}, **_LLAMA),
    "qwen2": FamilySpec(llama.QWEN2_DEFAULTS, {**_LLAMA_TASKS, "question_answering": llama.Qwen2ForQuestionAnswering},
                        **_LLAMA),
    "qwen3": FamilySpec(llama.QWEN3_DEFAULTS, {**_LLAMA_TASKS, "question_answering": llama.Qwen3ForQuestionAnswering},
                        **_LLAMA),
    "gpt2": FamilySpec(gpt2.GPT2_DEFAULTS,
                       {"base": gpt2.GPT2Model, "sequence_classification": gpt2.GPT2ForSequenceClassification,
                        "causal_lm": gpt2.GPT2LMHeadModel, "token_classification": gpt2.GPT2ForTokenClassification,
                        "question_answering": gpt2.GPT2ForQuestionAnswering},
                       "h", "wte", ignored_keys=re.compile(r"(^|\.)attn\.(masked_)?bias$"),
                       position_limit=lambda c: c.n_positions, check=gpt2.check_config),
}


def spec(model_type: str, source: str = "config.json") -> FamilySpec:
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"model_type {model_type!r} in {source} is not supported; supported: "
                              f"{', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type]


def model_class(model_type: str, task: str, source: str = "config.json") -> type:
    family = spec(model_type, source)
    if task not in family.tasks:
        having = sorted(t for t, s in MODEL_TYPES.items() if task in s.tasks)
        raise CheckpointError(f"model_type {model_type!r} ({source}) has no {task} model; model types that do: "
                              f"{', '.join(having)}")
    return family.tasks[task]


def position_limit(config: Config) -> int:
    """The longest input the model takes."""
    return spec(config.model_type, "the config").position_limit(config)


def config_from_values(values: dict, source: str, **overrides) -> Config:
    """config.json values with the caller's overrides; an override that is no config field is a TypeError, not
    lost; options the family does not implement are refused, naming them."""
    family = spec(values["model_type"], source)
    # finetuning_task: the reference's record of the task a config was made for (kept, written back)
    known = values.keys() | family.defaults.keys() | TASK_DEFAULTS.keys() | {"num_labels", "finetuning_task"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unexpected argument(s) {', '.join(unknown)}: not a field of this {values['model_type']} "
                        f"config (fields: {', '.join(sorted(known))})")
    values = dict(values)
    if "num_labels" in overrides and "id2label" in values and "id2label" not in overrides:
        values.pop("id2label")
        values.pop("label2id", None)
    if "id2label" in overrides and "label2id" not in overrides:
        values.pop("label2id", None)
    config = Config(family.defaults, **{**values, **overrides})
    try:
        family.check(config)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return config
