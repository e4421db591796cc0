"""Supervised fine-tuning with TRL's names: SFTConfig, SFTTrainer and its collator, over the Trainer (composition:
SFTTrainer prepares the data, owns a Trainer and adds its metrics; the loop is the Trainer's).

Dataset formats, as TRL's: {"text"} (or `dataset_text_field`), {"messages": [...]} (the chat template applied),
{"prompt", "completion"} as strings or as message lists. Labels are the input ids with -100 where no loss is taken:
the prompt (completion_only_loss), everything but the assistant's turns (assistant_only_loss). With packing, the
sequences are packed best-fit decreasing into rows of `max_length` tokens; each packed row carries position ids that
restart per sequence and no attention mask, the reference's padding-free format, which the decoders read as
separate sequences (attention.Packing.from_positions): packed sequences never attend to each other."""
from __future__ import annotations

import bisect
import logging
import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ..data import column_names
from ..models.heads import LMOutput
from .arguments import TrainingArguments
from .trainer import Trainer

logger = logging.getLogger("tuneforge")
KNOWN_ROLES = ("system", "user", "assistant", "tool", "developer")
FORMATS = ("'text' (or dataset_text_field)", "'messages'", "'prompt' + 'completion'")


@dataclass
class SFTConfig(TrainingArguments):
    """TRL's SFTConfig for what tuneforge implements, with its defaults (lr 2e-5, logging every 10 steps, gradient
    checkpointing on, bf16 unless set to False). Options it does not implement are refused by name."""

    learning_rate: float = 2e-5
    logging_steps: float = 10
    gradient_checkpointing: bool = True
    bf16: bool | None = None
    model_init_kwargs: dict[str, Any] | None = None
    chat_template_path: str | None = None
    dataset_text_field: str = "text"
    dataset_kwargs: dict[str, Any] | None = None
    dataset_num_proc: int | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    shuffle_dataset: bool = False
    packing: bool = False
    packing_strategy: str = "bfd"
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    eval_packing: bool | None = None
    completion_only_loss: bool | None = None
    assistant_only_loss: bool = False
    loss_type: str = "nll"
    activation_offloading: bool = False

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = True  # TRL's default (it would be False only with fp16, which tuneforge does not have)
        super().__post_init__()
        refused = {"packing_strategy": (self.packing_strategy, ("bfd",)),
                   "truncation_mode": (self.truncation_mode, ("keep_start",)),
                   "loss_type": (self.loss_type, ("nll", "chunked_nll")),
                   "activation_offloading": (self.activation_offloading, (False,)),
                   "chat_template_path": (self.chat_template_path, (None,))}
        for name, (value, supported) in refused.items():
            if value not in supported:
                raise InputError(f"SFTConfig({name}={value!r}) is not supported; supported: "
                                 f"{', '.join(map(repr, supported))}")
        unknown = set(self.dataset_kwargs or {}) - {"skip_prepare_dataset"}
        if unknown:
            raise InputError(f"dataset_kwargs {', '.join(sorted(unknown))}: only 'skip_prepare_dataset' is supported")
        if self.max_length is not None and self.max_length < 1:
            raise InputError(f"max_length must be at least 1 or None, got {self.max_length}")
        if self.packing and self.max_length is None:
            raise InputError("packing=True needs max_length (the packed rows' length); it is None")


@dataclass
class DataCollatorForLanguageModeling:
    """TRL's SFT collator: pads input_ids (pad_token_id) and labels (-100) on the right, with an attention mask; with
    padding_free, flattens the batch into one row with position ids that restart per sequence (from the rows'
    `seq_lengths` when packed) and no attention mask, and -100 at each sequence's first token, so no sequence is
    trained to predict the next one's start."""

    pad_token_id: int
    padding_free: bool = False
    return_position_ids: bool = False
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    makes_labels = True
    columns_read = ("seq_lengths",)  # kept by the Trainer, which removes the columns the model does not take

    def __call__(self, examples: list[dict]) -> dict:
        ids = [list(e["input_ids"]) for e in examples]
        labels = [list(e["labels"]) if "labels" in e else list(e["input_ids"]) for e in examples]
        lengths = [list(e["seq_lengths"]) if "seq_lengths" in e else [len(i)] for e, i in zip(examples, ids)]
        positions = [[p for n in row for p in range(n)] for row in lengths]
        if self.padding_free:
            ids, labels, positions = [sum(ids, [])], [sum(labels, [])], [sum(positions, [])]
        width = max(len(i) for i in ids)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        grid = lambda rows, value: torch.tensor([r + [value] * (width - len(r)) for r in rows])  # noqa: E731
        batch = {"input_ids": grid(ids, self.pad_token_id), "labels": grid(labels, -100)}
        if self.padding_free:
            batch["position_ids"] = grid(positions, 0)
            batch["labels"][batch["position_ids"] == 0] = -100
        else:
            if self.return_position_ids:
                batch["position_ids"] = grid(positions, 0)
            batch["attention_mask"] = grid([[1] * len(i) for i in ids], 0)
        return batch


# ------------------------------------------------------------------------------------------ the data


def pack_bfd(rows: list[dict], seq_length: int) -> list[dict]:
    """TRL's best-fit decreasing packing ('bfd'): sequences truncated to seq_length, longest first (ties in order),
    each into the open bin with the least space that fits it (the first opened among equals), else a new bin.
    -> one row per bin: input_ids and labels concatenated, seq_lengths its sequences' lengths."""
    rows = [{k: r[k][:seq_length] for k in ("input_ids", "labels")} for r in rows if len(r["input_ids"])]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    bins: list[list[int]] = []
    spaces: list[int] = []  # sorted distinct spaces of open bins with room
    by_space: dict[int, deque] = defaultdict(deque)
    for i in order:
        n = len(rows[i]["input_ids"])
        at = bisect.bisect_left(spaces, n)
        if at < len(spaces):
            space = spaces[at]
            b = by_space[space].popleft()
            if not by_space[space]:
                spaces.pop(at)
        else:
            space, b = seq_length, len(bins)
            bins.append([])
        bins[b].append(i)
        left = space - n
        if left > 0:
            if not by_space[left]:
                bisect.insort(spaces, left)
            by_space[left].append(b)
    return [{"input_ids": sum((rows[i]["input_ids"] for i in b), []), "labels": sum((rows[i]["labels"] for i in b), []),
             "seq_lengths": [len(rows[i]["input_ids"]) for i in b]} for b in bins]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _check_messages(messages, name: str, row: int, column: str) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"{name} row {row}: '{column}' must be a non-empty list of {{'role', 'content'}} messages, "
                         f"got {messages!r:.80}")
    for j, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in KNOWN_ROLES:
            raise InputError(f"{name} row {row}: '{column}' message {j} has role {role!r}; known roles: "
                             f"{', '.join(KNOWN_ROLES)}")


def _chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kwargs)["input_ids"])


def _assistant_mask(tokenizer, messages, ids: list[int], name: str, row: int) -> list[int]:
    """1 on the assistant's tokens. With {% generation %} markers in the template, the reference's
    return_assistant_tokens_mask; without (SmolLM2's ChatML, which TRL refuses), each assistant turn is the tokens
    between the conversation rendered up to it with the generation prompt and rendered through it."""
    if "{% generation" in (tokenizer.chat_template or "") or "{%- generation" in (tokenizer.chat_template or ""):
        out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return list(out["assistant_masks"])
    mask = [0] * len(ids)
    for j, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _chat_ids(tokenizer, messages[:j], add_generation_prompt=True) if j else []
        through = _chat_ids(tokenizer, messages[:j + 1])
        start, end = _common_prefix(before, through), len(through)
        if start < len(before) or ids[:end] != through:
            raise InputError(f"{name} row {row}: the chat template does not render assistant turn {j} as an "
                             "extension of the conversation before it, so its tokens cannot be found; use a template "
                             "with {% generation %} markers for assistant_only_loss")
        mask[start:end] = [1] * (end - start)
    return mask


def prepare_dataset(dataset, tokenizer, args: SFTConfig, name: str, packing: bool,
                    position_limit: int | None = None, formatting_func=None, first_row: int = 0) -> list[dict]:
    """Rows of the user's dataset -> tokenized rows {input_ids, labels} (packed: + seq_lengths), as TRL prepares
    them. Bad rows fail here with one line naming the dataset, row and column (rows counted from first_row: the
    command line counts a file's rows from 1)."""
    columns = column_names(dataset)
    if "input_ids" in columns and formatting_func is None:  # already tokenized: kept, labels default to the ids
        rows = [{"input_ids": list(r["input_ids"]), "labels": list(r.get("labels", r["input_ids"]))} for r in dataset]
        return _finish(rows, args, name, packing, position_limit, first_row)
    text_field = args.dataset_text_field
    if formatting_func is not None:
        kind = "text"
    elif "prompt" in columns and "completion" in columns:
        kind = "prompt_completion"
    elif "messages" in columns:
        kind = "messages"
    elif text_field in columns:
        kind = "text"
    else:
        raise InputError(f"{name} has none of the known columns (its columns: {', '.join(columns) or 'none'}); "
                         f"SFT takes {', '.join(FORMATS)}")
    completion_only = args.completion_only_loss
    if completion_only is None:
        completion_only = kind == "prompt_completion"
    elif completion_only and kind != "prompt_completion":
        raise InputError(f"completion_only_loss=True needs a 'prompt' + 'completion' dataset; {name} is '{kind}'")
    eos = tokenizer.eos_token
    rows = []
    for i, example in enumerate(dataset, start=first_row):
        if formatting_func is not None:
            example = {"text": formatting_func(example)}
            text_field = "text"
        if kind == "text":
            text = example[text_field]
            if not isinstance(text, str) or not text:
                raise InputError(f"{name} row {i}: '{text_field}' must be a non-empty string, got {text!r:.80}")
            if args.assistant_only_loss:
                raise InputError("assistant_only_loss=True needs a conversational dataset ('messages', or 'prompt' + "
                                 f"'completion' as message lists); {name} is plain text")
            if eos and not text.endswith(eos):
                text += eos
            ids = list(tokenizer(text)["input_ids"])
            masks = []
        elif kind == "messages":
            messages = example["messages"]
            _check_messages(messages, name, i, "messages")
            ids = _chat_ids(tokenizer, messages)
            masks = [_assistant_mask(tokenizer, messages, ids, name, i)] if args.assistant_only_loss else []
        else:
            prompt, completion = example["prompt"], example["completion"]
            if not completion:
                raise InputError(f"{name} row {i}: 'completion' is empty; every example needs a completion to train on")
            if isinstance(prompt, str) != isinstance(completion, str):
                raise InputError(f"{name} row {i}: 'prompt' and 'completion' must both be strings or both be message "
                                 "lists")
            if isinstance(completion, str):
                if args.assistant_only_loss:
                    raise InputError("assistant_only_loss=True needs conversational prompts and completions (message "
                                     f"lists); {name} has strings")
                if eos and not completion.endswith(eos):
                    completion += eos
                prompt_ids = list(tokenizer(prompt)["input_ids"])
                ids = list(tokenizer(prompt + completion)["input_ids"])
                conversation = None
            else:
                _check_messages(prompt, name, i, "prompt")
                _check_messages(completion, name, i, "completion")
                conversation = list(prompt) + list(completion)
                prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
                ids = _chat_ids(tokenizer, conversation)
            start = _common_prefix(prompt_ids, ids)
            masks = [[0] * start + [1] * (len(ids) - start)] if completion_only else []
            if args.assistant_only_loss:
                masks.append(_assistant_mask(tokenizer, conversation, ids, name, i))
        if args.assistant_only_loss and 1 not in masks[-1]:
            raise InputError(f"{name} row {i}: assistant_only_loss=True but the example has no assistant tokens")
        labels = [t if all(m[j] for m in masks) else -100 for j, t in enumerate(ids)]
        rows.append({"input_ids": ids, "labels": labels})
    return _finish(rows, args, name, packing, position_limit, first_row)


def _finish(rows: list[dict], args: SFTConfig, name: str, packing: bool, position_limit: int | None,
            first_row: int = 0) -> list[dict]:
    limit = args.max_length
    if limit is None and position_limit is not None:  # truncation off: nothing may exceed what the model takes
        for i, r in enumerate(rows, start=first_row):
            if len(r["input_ids"]) > position_limit:
                raise InputError(f"{name} row {i}: {len(r['input_ids'])} tokens, longer than the model's "
                                 f"{position_limit} positions, with truncation off (max_length=None); set max_length")
    if packing:
        return pack_bfd(rows, limit)
    if limit is not None:
        rows = [{k: v[:limit] for k, v in r.items()} for r in rows]  # keep_start
    kept = [r for r in rows if any(t != -100 for t in r["labels"])]  # TRL drops fully masked examples
    if not kept:
        raise InputError(f"{name}: no example has a token to train on after masking and truncation to {limit}")
    return kept


# ------------------------------------------------------------------------------------------ the trainer


def _with_adapter(model, peft_config):
    """TRL's peft_config: the model wrapped with get_peft_model(model, peft_config) (task_type as given: TRL sets
    none). TRL's other PEFT steps need nothing here: enable_input_require_grads is for reentrant checkpointing, and
    tuneforge's is non-reentrant (reentrant is refused); added tokens come only with chat_template_path (refused);
    an adapter on lm_head, which TRL refuses because its fused LM head reads lm_head.weight, trains here (the LM head
    calls a replaced module as a module)."""
    from ..peft.lora import LoraConfig, PeftModel, get_peft_model
    if not isinstance(peft_config, LoraConfig):
        raise TypeError(f"peft_config must be a tuneforge LoraConfig (tuneforge implements LoRA only), got "
                        f"{type(peft_config).__module__}.{type(peft_config).__name__}")
    if isinstance(model, PeftModel):
        raise InputError("You passed a PeftModel together with a peft_config to SFTTrainer: merge_and_unload() the "
                         "existing adapter first, save that base model, and pass it with the new peft_config")
    return get_peft_model(model, peft_config)


class SFTTrainer:
    """TRL's SFTTrainer over the Trainer: `model` a model or a checkpoint path (loaded with
    AutoModelForCausalLM and args.model_init_kwargs), datasets in TRL's formats, `processing_class` the tokenizer
    (loaded from the path when not given), `peft_config` a LoraConfig: the model is wrapped with get_peft_model and
    save_model() writes the adapter (PEFT's format). Logs TRL's `num_tokens` (all tokens trained on so far, padding
    excluded) and `mean_token_accuracy` (argmax hits over labelled tokens, per logging interval). Everything else —
    train(), evaluate(), save_model(), state, ... — is the Trainer's."""

    def __init__(self, model, args: SFTConfig | TrainingArguments | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_loss_func=None,
                 compute_metrics=None, callbacks=None, optimizers=(None, None), optimizer_cls_and_kwargs=None,
                 preprocess_logits_for_metrics=None, peft_config=None, formatting_func=None):
        from ..models import AutoModelForCausalLM
        from ..tokenizer import AutoTokenizer
        if args is None:
            name = model if isinstance(model, str) else type(model).__name__
            args = SFTConfig(output_dir=f"{str(name).split('/')[-1]}-SFT")
        elif not isinstance(args, SFTConfig):
            args = SFTConfig(**{k: v for k, v in args.to_dict().items() if k != "hub_token"},
                             hub_token=args.hub_token)
        for option, value in (("compute_loss_func", compute_loss_func),
                              ("optimizer_cls_and_kwargs", optimizer_cls_and_kwargs)):
            if value is not None:
                raise InputError(f"SFTTrainer({option}=...) is not supported by tuneforge")
        if isinstance(model, str):
            path = model
            init = dict(args.model_init_kwargs or {})
            if "dtype" not in init and "torch_dtype" not in init:  # TRL's default: float32 weights (bf16=True
                init["dtype"] = torch.float32                   # trains them under autocast)
            model = AutoModelForCausalLM.from_pretrained(path, **init)
            if processing_class is None:
                gguf = (args.model_init_kwargs or {}).get("gguf_file")
                processing_class = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
        elif args.model_init_kwargs:
            raise InputError("model_init_kwargs is used only when model is a path; the model is already built")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config.name_or_path)
        tokenizer = processing_class
        if peft_config is not None:
            model = _with_adapter(model, peft_config)
        if args.eos_token is not None:
            if args.eos_token not in tokenizer.get_vocab():
                raise InputError(f"eos_token {args.eos_token!r} is not in the tokenizer's vocabulary")
            tokenizer.eos_token = args.eos_token
            model.config.eos_token_id = tokenizer.eos_token_id
        pad = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
        if pad is None or pad not in tokenizer.get_vocab():
            raise InputError(f"pad token {pad!r} is not in the tokenizer's vocabulary; set tokenizer.pad_token")
        tokenizer.pad_token = pad
        self.args, self.processing_class = args, tokenizer
        padding_free = args.padding_free or args.packing
        eval_packing = args.packing if args.eval_packing is None else args.eval_packing
        if data_collator is None:
            data_collator = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=padding_free,
                                                            pad_to_multiple_of=args.pad_to_multiple_of)
        skip = (args.dataset_kwargs or {}).get("skip_prepare_dataset", False)
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        prepare = lambda d, name, packing: d if skip or d is None else prepare_dataset(  # noqa: E731
            d, tokenizer, args, name, packing, limit, formatting_func)
        train = prepare(train_dataset, "train_dataset", args.packing)
        if isinstance(eval_dataset, dict):
            evals = {k: prepare(v, f"eval_dataset[{k!r}]", eval_packing) for k, v in eval_dataset.items()}
            eval_dataset = evals
        else:
            eval_dataset = prepare(eval_dataset, "eval_dataset", eval_packing)
        if args.shuffle_dataset and train is not None:
            g = torch.Generator().manual_seed(args.seed)
            train = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
        self.trainer = Trainer(model=model, args=args, data_collator=data_collator, train_dataset=train,
                               eval_dataset=eval_dataset, processing_class=tokenizer, compute_metrics=compute_metrics,
                               callbacks=callbacks, optimizers=optimizers,
                               preprocess_logits_for_metrics=preprocess_logits_for_metrics)
        self._trainer_compute_loss, self._trainer_log = self.trainer.compute_loss, self.trainer.log
        self.trainer.compute_loss, self.trainer.log = self.compute_loss, self.log
        self._tokens_seen = 0
        self._correct = self._targets = 0

    def __getattr__(self, name):  # everything else is the Trainer's
        if name == "trainer":
            raise AttributeError(name)
        return getattr(self.trainer, name)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self._trainer_compute_loss(model, inputs, return_outputs=True,
                                                   num_items_in_batch=num_items_in_batch)
        if model.training:
            # TRL counts the tokens of each row that are not padding: the attention mask, or a padding-free row's
            # whole width.
            mask = inputs.get("attention_mask")
            self._tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            if isinstance(outputs, LMOutput):
                self._correct += int(outputs.num_correct)
                self._targets += int(outputs.num_targets)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add TRL's metrics, summed over processes
            dist = self.trainer.dist
            counts = torch.tensor([self._tokens_seen, self._correct, self._targets], dtype=torch.float64,
                                  device=dist.device)
            tokens, correct, targets = (dist.mean(counts) * dist.world_size).tolist()
            logs["num_tokens"] = float(tokens)
            logs["mean_token_accuracy"] = correct / targets if targets else 0.0
            self._correct = self._targets = 0
        self._trainer_log(logs, start_time)
