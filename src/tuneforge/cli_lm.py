"""`tuneforge train|evaluate --task causal-lm|sft` and `tuneforge generate`: fine-tuning decoders from the command
line. Shares cli.py's settings, output-folder rules and error contract (bad input: one line naming the file, row
and column, exit code 2).

Files (JSONL, JSON, CSV, parquet, ...) hold one of TRL's dataset formats: a `text` column (or --text-column),
`messages` (a list of {role, content}: the chat template is applied), or `prompt` + `completion` (strings, or
message lists). Both tasks read them alike (training/sft.py's prepare_dataset, so the same checks apply):

- `--task sft`: SFTTrainer with SFTConfig's defaults; completion-only loss on prompt/completion data, optional
  packing and assistant-only loss. Records are cut at --max-length (TRL keeps the start), or refused with
  --no-truncation.
- `--task causal-lm`: the Transformers language-modelling recipe: every token is trained on; the records (each
  ending with the eos token) are concatenated and cut into blocks of --max-length tokens (`group_texts`), so a long
  record spans blocks and nothing is cut away; the last, shorter block is kept (tuneforge spends nothing on its
  padding), where the recipe drops it.

`--lora` (with --lora-r, --lora-alpha, --lora-target) trains a CAUSAL_LM adapter instead of the whole model; the
output folder is then an adapter folder, which evaluate, generate and merge take (the base from its
adapter_config.json).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import cli

LM_TASKS = ("causal-lm", "sft")
FORMATS = ("'text' (plain text; or name the column with --text-column)", "'messages' (a list of {role, content})",
           "'prompt' + 'completion' (strings or message lists)")
DEFAULT_MAX_LENGTH = 1024  # SFTConfig's max_length; the block size of causal-lm too, within the model's limit
DEFAULT_NEW_TOKENS = 64
LM_FLAGS = {"packing": "--packing", "no_truncation": "--no-truncation",
            "no_completion_only_loss": "--no-completion-only-loss", "assistant_only_loss": "--assistant-only-loss",
            "gguf_file": "--gguf-file"}


def add_train_options(parser) -> None:
    """The LM flags of `tuneforge train` (and --gguf-file of evaluate)."""
    parser.add_argument("--gguf-file", metavar="NAME", help="causal-lm/sft: load the model and tokenizer from this "
                        "GGUF file inside --model (the output folder is a normal model folder)")
    parser.add_argument("--packing", action="store_true", default=None, help="sft: pack records best-fit "
                        "decreasing into rows of --max-length tokens (they never attend to each other)")
    parser.add_argument("--no-truncation", action="store_true", default=None, help="sft: a record longer than "
                        "--max-length is an error instead of being cut (TRL keeps the start)")
    parser.add_argument("--no-completion-only-loss", action="store_true", default=None, help="sft on prompt/"
                        "completion data: train on the prompt's tokens too (default: the completion's only)")
    parser.add_argument("--assistant-only-loss", action="store_true", default=None, help="sft on conversations: "
                        "train on the assistant's turns only")


def add_generate_command(commands) -> None:
    p = commands.add_parser("generate", help="continue prompts with a causal LM (e.g. a causal-lm/sft result)",
                            description="Greedy (or sampled) continuations of prompts, one JSON line per prompt "
                            "on stdout: {\"prompt\", \"completion\"}.")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (the output of train --task sft)")
    p.add_argument("--gguf-file", metavar="NAME", help="a GGUF file inside --model to load instead")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", metavar="TEXT", help="one prompt")
    source.add_argument("--file", metavar="FILE", help="prompts: a file (JSONL, CSV, ...) with a 'prompt' column "
                        "(text or a message list), 'messages' (a conversation to answer) or 'text'")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_NEW_TOKENS, metavar="N",
                   help=f"default: {DEFAULT_NEW_TOKENS}")
    p.add_argument("--chat", action="store_true", help="wrap each text prompt as a user message and apply the "
                   "model's chat template (message lists always are)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, metavar="T", help="with --do-sample (default: the model's, or 1.0)")
    p.add_argument("--top-p", type=float, metavar="P", help="with --do-sample (default: the model's, or 1.0)")
    p.add_argument("--seed", type=int, default=42, help="with --do-sample (default: 42)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per batch (default: 8)")
    p.set_defaults(run=cmd_generate)


def refuse_lm_flags(opts) -> None:
    """The LM flags given to another task are refused, not ignored."""
    given = [flag for dest, flag in LM_FLAGS.items() if getattr(opts, dest, None)]
    if given:
        raise cli.UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --task causal-lm or sft, "
                             f"not --task {opts.task}")

# ------------------------------------------------------------------------------------------ reading data


def read_records(path: Path, what: str, text_column: str | None, task: str):
    """A file's rows (a datasets.Dataset) after checking it holds one of the known formats."""
    table = cli.read_table(path, what)
    columns = table.column_names
    if text_column is not None:
        cli.pick_column(table, path, text_column, (), "--text-column")
    elif not ({"prompt", "completion"} <= set(columns) or "messages" in columns or "text" in columns):
        half = next((c for c in ("prompt", "completion") if c in columns), None)
        hint = f" ('{half}' needs its partner column)" if half else ""
        raise cli.UsageError(f"{path} has none of the known columns{hint} (its columns: {', '.join(columns)}); "
                             f"--task {task} takes {'; '.join(FORMATS)}")
    return table


def _prepare(table, tokenizer, sft_args, path: Path, packing: bool) -> list[dict]:
    from .training.sft import prepare_dataset
    return prepare_dataset(table, tokenizer, sft_args, str(path), packing, first_row=1)


def group_texts(rows: list[dict], block_size: int) -> list[dict]:
    """The recipe's group_texts: all records' tokens concatenated and cut into blocks of block_size (the last,
    shorter block kept when it has at least 2 tokens: one prediction)."""
    ids = [t for r in rows for t in r["input_ids"]]
    blocks = [ids[i:i + block_size] for i in range(0, len(ids), block_size)]
    return [{"input_ids": b} for b in blocks if len(b) >= 2]


def _hold_out(table, path: Path, seed: int):
    """A seeded 10% of the records for evaluation, when no --eval file is given."""
    if len(table) < 2:
        raise cli.UsageError(f"{path} has a single record: too few to hold out an eval split; pass --eval")
    parts = table.train_test_split(test_size=cli.EVAL_SHARE, seed=seed)
    cli.note(f"no --eval file: holding out a seeded {cli.EVAL_SHARE:.0%} of {path} ({len(parts['test'])} records) "
             "for evaluation")
    return parts["train"], parts["test"], f"{cli.EVAL_SHARE:.0%} of {path} held out (seed {seed})"


def _check_lengths(rows: list[dict], path: Path, max_length: int) -> None:
    for row, r in enumerate(rows, start=1):
        if len(r["input_ids"]) > max_length:
            raise cli.UsageError(f"{path} row {row}: {len(r['input_ids'])} tokens, longer than --max-length "
                                 f"{max_length}, and --no-truncation is set; raise --max-length or drop "
                                 "--no-truncation to keep each record's start")

# ------------------------------------------------------------------------------------------------ train


def _check_options(opts) -> None:
    task = opts.task
    for dest in ("text_pair_column", "label_column", "stride"):
        if getattr(opts, dest, None):
            raise cli.UsageError(f"--{dest.replace('_', '-')} is not for --task {task}")
    if getattr(opts, "lora", False) and opts.gguf_file:
        # The adapter names its base by a folder (adapter_config.json's base_model_name_or_path), which a GGUF
        # file inside one is not: neither PEFT nor evaluate/generate/merge could load the base again.
        raise cli.UsageError("--lora with --gguf-file: an adapter's base must be a model folder; convert the GGUF "
                             "file first (AutoModelForCausalLM.from_pretrained(DIR, gguf_file=NAME)"
                             ".save_pretrained(FOLDER), tokenizer likewise) and train on that folder")
    if opts.model is None:
        raise cli.UsageError(f"--task {task} needs --model DIR: a decoder (causal LM) folder")
    if getattr(opts, "train", "") is None:
        raise cli.UsageError(f"--task {task} needs --train FILE (the built-in job is text classification)")
    if task == "causal-lm":
        for dest in ("packing", "no_truncation", "no_completion_only_loss", "assistant_only_loss"):
            if getattr(opts, dest, None):
                why = (" (records are cut into blocks, so none is too long and none is cut away)"
                       if dest == "no_truncation" else "")
                raise cli.UsageError(f"{LM_FLAGS[dest]} is for --task sft; causal-lm trains on every token{why}")


def _load_config(folder: str):
    """The model's config; for a LoRA adapter folder (train --lora writes one), its base model's."""
    from .peft.lora import LoraConfig, is_adapter_folder
    if is_adapter_folder(folder):
        base = LoraConfig.from_pretrained(folder).base_model_name_or_path
        if not base:
            raise cli.UsageError(f"{folder}/adapter_config.json names no base_model_name_or_path")
        return cli.load_config(base)
    return cli.load_config(folder)


def _load_tokenizer_and_capacity(opts):
    from .models import AutoModelForCausalLM
    from .tokenizer import AutoTokenizer
    gguf = {"gguf_file": opts.gguf_file} if opts.gguf_file else {}
    model = None
    if opts.gguf_file:  # a GGUF file holds the config with the weights: read once
        model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32, **gguf)
        config = model.config
    else:
        config = _load_config(opts.model)
    tokenizer = AutoTokenizer.from_pretrained(opts.model, **gguf)
    if tokenizer.pad_token is None:  # the recipe's tokenizer.pad_token = tokenizer.eos_token (as SFTTrainer does)
        if tokenizer.eos_token is None:
            raise cli.UsageError(f"the tokenizer of {opts.model} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return model, config, tokenizer, cli.model_capacity(config, tokenizer)


def _sft_config(values: dict, opts, max_length: int | None, output_dir: str | None = None):
    from .training.sft import SFTConfig
    if opts.task == "causal-lm":  # the config only prepares the data there: the Trainer gets TrainingArguments
        values = {**values, "bf16": False}
    return SFTConfig(**{**values, **({"output_dir": output_dir} if output_dir else {})}, max_length=max_length,
                     packing=bool(opts.packing) if opts.task == "sft" else False,
                     completion_only_loss=(False if opts.task == "causal-lm" or opts.no_completion_only_loss
                                           else None),
                     assistant_only_loss=bool(opts.assistant_only_loss) if opts.task == "sft" else False,
                     dataset_kwargs={"skip_prepare_dataset": True})


def _datasets(task, table, tokenizer, sft_args, path: Path, max_length: int, no_truncation: bool,
              packing: bool) -> list[dict]:
    """Tokenized training rows: blocks (causal-lm), or SFT rows cut at (or checked against) max_length."""
    if task == "causal-lm":
        return group_texts(_prepare(table, tokenizer, sft_args, path, packing=False), max_length)
    if not no_truncation:
        return _prepare(table, tokenizer, sft_args, path, packing)
    import dataclasses

    from .training.sft import pack_bfd
    uncut = dataclasses.replace(sft_args, max_length=None)
    rows = _prepare(table, tokenizer, uncut, path, packing=False)
    _check_lengths(rows, path, max_length)
    return pack_bfd(rows, max_length) if packing else rows


def cmd_train_lm(opts):
    _check_options(opts)
    task = opts.task
    values, chosen = cli.training_settings(opts)
    push = values.pop("push_to_hub", False)
    if task == "sft":
        values.setdefault("bf16", None)  # TRL's default (on) unless --bf16 or --config says otherwise
    probe = _sft_config(values, opts, DEFAULT_MAX_LENGTH) if task == "sft" else None  # settings errors first
    if probe is None:
        from .training.arguments import TrainingArguments
        TrainingArguments(**values)
    output_dir = Path(values["output_dir"])
    stale = cli.check_output_dir(output_dir, opts.resume, opts.overwrite)
    train_path, eval_path = Path(opts.train), Path(opts.eval) if opts.eval else None
    train_table = read_records(train_path, "train", opts.text_column, task)
    eval_table = read_records(eval_path, "eval", opts.text_column, task) if eval_path else None
    model, config, tokenizer, capacity = _load_tokenizer_and_capacity(opts)
    max_length = cli.resolve_max_length(opts.max_length, DEFAULT_MAX_LENGTH, capacity)
    sft_args = _sft_config(values, opts, max_length)
    if opts.text_column:
        sft_args.dataset_text_field = opts.text_column
    if eval_table is None:
        train_table, eval_table, eval_source = _hold_out(train_table, train_path, sft_args.seed)
    else:
        eval_source = str(eval_path)
    build = lambda table, path, packing: _datasets(  # noqa: E731
        task, table, tokenizer, sft_args, path, max_length, bool(opts.no_truncation), packing)
    train_set = build(train_table, train_path, bool(opts.packing))
    eval_set = build(eval_table, eval_path or train_path, bool(opts.packing))

    from .models import AutoModelForCausalLM
    from .training.trainer import set_seed
    set_seed(sft_args.seed)
    if model is None:  # float32 weights to train (--bf16 trains them under autocast), whatever was saved
        model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32)
    model = cli.with_lora(model, opts, "CAUSAL_LM")
    unit = "blocks" if task == "causal-lm" else "packed rows" if opts.packing else "records"
    cli.note(f"{'training' if task == 'causal-lm' else 'fine-tuning (SFT)'} {opts.model} "
             f"({model.num_parameters() / 1e6:.1f}M parameters) on {train_path} ({len(train_set)} {unit}, "
             f"{sum(len(r['input_ids']) for r in train_set):,d} tokens), evaluating on {eval_source} "
             f"({len(eval_set)} {unit}); max length {max_length} tokens")
    watcher = cli.EvalWatcher()
    if task == "sft":
        from .training.sft import SFTTrainer
        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=train_set, eval_dataset=eval_set,
                             processing_class=tokenizer, callbacks=[watcher])
    else:
        from .training.arguments import TrainingArguments
        from .training.sft import DataCollatorForLanguageModeling
        from .training.trainer import Trainer
        # TRL's collator, not the recipe's: that one masks every label equal to pad_token_id, and with pad = eos
        # (SmolLM2, GPT-2's recipe) the eos closing each record would never be learnt.
        trainer = Trainer(model=model, args=TrainingArguments(**values), train_dataset=train_set,
                          eval_dataset=eval_set, processing_class=tokenizer, callbacks=[watcher],
                          data_collator=DataCollatorForLanguageModeling(tokenizer.pad_token_id))
    if trainer.dist.is_main:
        cli.clear(stale)
    trainer.dist.barrier()
    train_output = trainer.train(resume_from_checkpoint=opts.resume)
    if watcher.last is not None and watcher.last[0] == trainer.state.global_step:
        final = watcher.last[1]
    else:
        final = trainer.evaluate()
    final = with_perplexity(final)
    if not push:
        trainer.save_model()
    trainer.save_state()
    if trainer.dist.is_main:
        (output_dir / "eval_results.json").write_text(json.dumps(final, indent=2) + "\n", encoding="utf-8")
        settings = {"model": opts.model + (f" ({opts.gguf_file})" if opts.gguf_file else ""), "task": task,
                    "train file": str(train_path), "eval data": eval_source, f"train {unit}": len(train_set),
                    f"eval {unit}": len(eval_set), "max length": max_length}
        if task == "sft":
            settings.update(packing=sft_args.packing, truncation=not opts.no_truncation,
                            completion_only_loss=sft_args.completion_only_loss,
                            assistant_only_loss=sft_args.assistant_only_loss,
                            gradient_checkpointing=sft_args.gradient_checkpointing)
        write_lm_report(trainer, output_dir, final, train_output.metrics, train_set, eval_set, settings,
                        title=f"tuneforge: {cli._model_name(opts.model)} {task} on {train_path.name}")
    if not cli.finish_train(trainer, output_dir, chosen, push, f"tuneforge train --task {task}",
                            hint=f" (try it: tuneforge generate --model {output_dir} --prompt ...)"):
        return None
    return final


def with_perplexity(metrics: dict) -> dict:
    """eval_perplexity = exp(eval_loss), the recipe's math.exp(eval_results['eval_loss'])."""
    loss = metrics.get("eval_loss")
    if loss is None:
        return dict(metrics)
    try:
        perplexity = math.exp(loss)
    except OverflowError:
        perplexity = float("inf")
    return {**metrics, "eval_perplexity": perplexity}


def write_lm_report(trainer, output_dir: Path, final: dict, train_metrics: dict, train_set, eval_set,
                    settings: dict, title: str) -> None:
    """report.html for an LM run: loss and perplexity curves and token throughput (no classification tables)."""
    from .report import write_report
    runtime = train_metrics.get("train_runtime")
    trained = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    if trained:  # SFT counts the tokens it trained on
        tokens = trained[-1]
    else:  # causal-lm: the samples seen times the blocks' mean length
        tokens = train_metrics.get("train_samples_per_second", 0) * (runtime or 0) * float(
            np.mean([len(r["input_ids"]) for r in train_set]))
    eval_runtime = final.get("eval_runtime")
    eval_tokens = sum(len(r["input_ids"]) for r in eval_set)
    throughput = {
        "train_runtime": runtime,
        "train_tokens": int(tokens),
        "train_tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "train_samples_per_second": train_metrics.get("train_samples_per_second"),
        "train_steps_per_second": train_metrics.get("train_steps_per_second"),
        "eval_runtime": eval_runtime,
        "eval_tokens_per_second": round(eval_tokens / eval_runtime, 1) if eval_runtime else None,
        "processes": trainer.dist.world_size,
    }
    shown = {**settings, **{k: getattr(trainer.args, k) for k in cli.REPORTED_FIELDS}}
    write_report(output_dir / "report.html", log_history=trainer.state.log_history, settings=shown,
                 throughput=throughput, title=title, language_model=True)

# --------------------------------------------------------------------------------------------- evaluate


def cmd_evaluate_lm(opts):
    """eval_loss (the mean over every labelled token) and eval_perplexity of a model on a file, prepared as
    training prepares it (--max-length blocks for causal-lm; SFT's labels for sft)."""
    for dest in ("text_pair_column", "label_column", "stride"):
        if getattr(opts, dest, None):
            raise cli.UsageError(f"--{dest.replace('_', '-')} is not for --task {opts.task}")
    for dest in ("packing", "no_truncation", "no_completion_only_loss", "assistant_only_loss"):
        setattr(opts, dest, getattr(opts, dest, None))
    path = Path(opts.data)
    table = read_records(path, "data", opts.text_column, opts.task)
    model, config, tokenizer, capacity = _load_tokenizer_and_capacity(opts)
    max_length = cli.resolve_max_length(opts.max_length, DEFAULT_MAX_LENGTH, capacity)
    with tempfile.TemporaryDirectory(prefix="tuneforge-") as scratch:
        args = _sft_config({"output_dir": scratch, "per_device_eval_batch_size": opts.batch_size, "bf16": False,
                            "report_to": "none"}, opts, max_length)
        if opts.text_column:
            args.dataset_text_field = opts.text_column
        rows = _datasets(opts.task, table, tokenizer, args, path, max_length, False, False)
        if model is None:
            from .models import AutoModelForCausalLM
            model = cli.load_model(AutoModelForCausalLM, opts.model)
        from .training.sft import DataCollatorForLanguageModeling
        from .training.trainer import Trainer
        trainer = Trainer(model=model, args=args, processing_class=tokenizer,
                          data_collator=DataCollatorForLanguageModeling(tokenizer.pad_token_id))
        metrics = trainer.evaluate([{**r, "labels": r.get("labels", r["input_ids"])} for r in rows])
    return with_perplexity(metrics) if trainer.dist.is_main else None

# --------------------------------------------------------------------------------------------- generate


def _prompts(opts, tokenizer) -> list:
    """Each prompt as a string (sent as is, or as a user message with --chat) or a message list."""
    if opts.prompt is not None:
        return [opts.prompt]
    path = Path(opts.file)
    table = cli.read_table(path, "prompts")
    column = next((c for c in ("prompt", "messages", "text") if c in table.column_names), None)
    if column is None:
        raise cli.UsageError(f"{path} has no 'prompt', 'messages' or 'text' column (its columns: "
                             f"{', '.join(table.column_names)})")
    from .training.sft import _check_messages
    prompts = []
    for row, value in enumerate(table[column], start=1):
        if isinstance(value, str):
            if not value:
                raise cli.UsageError(f"{path} row {row}: '{column}' is empty")
        elif isinstance(value, list):
            _check_messages(value, str(path), row, column)
        else:
            raise cli.UsageError(f"{path} row {row}: '{column}' must be text or a list of messages, got {value!r:.80}")
        prompts.append(value)
    return prompts


def cmd_generate(opts):
    import torch

    from .models import AutoModelForCausalLM
    from .tokenizer import AutoTokenizer
    if opts.max_new_tokens < 1:
        raise cli.UsageError(f"--max-new-tokens must be at least 1, got {opts.max_new_tokens}")
    if opts.batch_size < 1:
        raise cli.UsageError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if not opts.do_sample and (opts.temperature is not None or opts.top_p is not None):
        raise cli.UsageError("--temperature and --top-p apply with --do-sample only")
    gguf = {"gguf_file": opts.gguf_file} if opts.gguf_file else {}
    if not gguf:
        _load_config(opts.model)  # not a model folder: one line, before the weights
    tokenizer = AutoTokenizer.from_pretrained(opts.model, **gguf)
    prompts = _prompts(opts, tokenizer)
    chat = opts.chat or any(not isinstance(p, str) for p in prompts)
    if chat and not tokenizer.chat_template:
        raise cli.UsageError(f"the tokenizer of {opts.model} has no chat template (--chat, or message-list prompts)")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}] if isinstance(p, str) else list(p),
                                           tokenize=False, add_generation_prompt=True) if chat else p
             for p in prompts]
    model = (AutoModelForCausalLM.from_pretrained(opts.model, **gguf) if gguf
             else cli.load_model(AutoModelForCausalLM, opts.model)).eval()
    limit = cli.model_capacity(model.config, tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues each row from its last real token
    sampling = {k: v for k, v in (("temperature", opts.temperature), ("top_p", opts.top_p)) if v is not None}
    generator = torch.Generator().manual_seed(opts.seed) if opts.do_sample else None
    # A chat template writes the special tokens itself; plain text gets the tokenizer's usual ones.
    special = not chat
    for start in range(0, len(texts), opts.batch_size):
        chunk = texts[start:start + opts.batch_size]
        batch = tokenizer(chunk, padding=True, return_tensors="pt", add_special_tokens=special)
        for i, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
            if n + opts.max_new_tokens > limit:
                where = "--prompt" if opts.prompt is not None else f"{opts.file} row {start + i + 1}"
                raise cli.UsageError(f"{where}: {n} prompt tokens + --max-new-tokens {opts.max_new_tokens} exceed "
                                     f"the model's {limit} positions")
        with torch.no_grad():
            out = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=opts.max_new_tokens, do_sample=opts.do_sample,
                                 pad_token_id=tokenizer.pad_token_id, generator=generator, **sampling)
        width = batch["input_ids"].shape[1]
        for prompt, row in zip(prompts[start:start + opts.batch_size], out[:, width:].tolist()):
            completion = tokenizer.decode(row, skip_special_tokens=True)
            opts.stdout.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
        opts.stdout.flush()
    cli.note(f"generated {len(texts)} completion{'s' if len(texts) != 1 else ''} with {opts.model}")
    return None
