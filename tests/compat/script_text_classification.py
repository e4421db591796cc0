"""In the style of the reference's examples/pytorch/text-classification/run_glue.py and the Trainer docs: argument
dataclasses through HfArgumentParser, do_train/do_eval/do_predict, get_last_checkpoint, a Trainer subclass overriding
compute_loss and create_optimizer, a callback on on_optimizer_step. Written for transformers; the compat tests run
it unchanged but for the word "transformers" in its imports."""
import csv
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset

import transformers
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser,
                          PretrainedConfig, Trainer, TrainerCallback, TrainingArguments, set_seed)
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import check_min_version
from transformers.utils.versions import require_version

check_min_version("4.40.0")
require_version("datasets>=2.0.0", "To fix: pip install -r examples/pytorch/text-classification/requirements.txt")
logger = transformers.utils.logging.get_logger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to pretrained model or model identifier"})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models"})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use a fast tokenizer"})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A TSV file with sentence and label columns"})
    max_seq_length: int = field(default=64)
    max_train_samples: int | None = field(default=None)


class WeightedLossTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.get("logits")
        loss_fct = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]))
        loss = loss_fct(logits.view(-1, self.model.config.num_labels), labels.view(-1))
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.args.learning_rate)
        return self.optimizer


class OptimizerSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps += 1


def main(argv):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_warning()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
    set_seed(training_args.seed)

    with open(data_args.train_file, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[: data_args.max_train_samples]
    raw = Dataset.from_dict({"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]})

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=2, finetuning_task="sst2",
                                        cache_dir=model_args.cache_dir, revision="main", token=None,
                                        trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                              use_fast=model_args.use_fast_tokenizer, revision="main", token=None,
                                              trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, from_tf=False, config=config, cache_dir=model_args.cache_dir,
        revision="main", token=None, trust_remote_code=False, ignore_mismatched_sizes=False)
    assert model.config.label2id == PretrainedConfig(num_labels=2).label2id

    def preprocess(examples):
        return tokenizer(examples["sentence"], padding=False, max_length=data_args.max_seq_length, truncation=True)

    with training_args.main_process_first(desc="dataset map pre-processing"):
        data = raw.map(preprocess, batched=True)
    split = data.train_test_split(test_size=0.25, shuffle=False)

    def compute_metrics(p):
        preds = np.argmax(p.predictions, axis=1)
        return {"accuracy": float((preds == p.label_ids).mean())}

    steps = OptimizerSteps()
    trainer = WeightedLossTrainer(model=model, args=training_args, train_dataset=split["train"],
                                  eval_dataset=split["test"], compute_metrics=compute_metrics,
                                  processing_class=tokenizer, callbacks=[steps])
    results = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        metrics = train_result.metrics
        trainer.save_model()
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results["train_loss"] = metrics["train_loss"]
    if training_args.do_eval:
        metrics = trainer.evaluate(eval_dataset=split["test"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(eval_loss=metrics["eval_loss"], eval_accuracy=metrics["eval_accuracy"])
    if training_args.do_predict:
        output = trainer.predict(split["test"], metric_key_prefix="predict")
        trainer.log_metrics("predict", output.metrics)
        results.update(predict_accuracy=output.metrics["predict_accuracy"],
                       predicted=np.argmax(output.predictions, axis=1).tolist())
    results["optimizer_steps"] = steps.steps
    results["logged_losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return results


if __name__ == "__main__":
    print(main(sys.argv[1:]))
