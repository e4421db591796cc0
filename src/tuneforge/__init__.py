"""tuneforge: fine-tune pretrained transformer checkpoints with the names of the Transformers fine-tuning guide."""
from . import metrics
from .data import (DataCollatorForLanguageModeling, DataCollatorForMultipleChoice, DataCollatorForTokenClassification,
                   DataCollatorWithPadding, DefaultDataCollator, default_data_collator)
from .models import AutoModelForMaskedLM
from .models import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMultipleChoice,
                     AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoModelForTokenClassification)
from .models.generation import GenerationConfig
from .models.config import Config
from .peft import LoraConfig, PeftModel, TaskType, get_peft_model
from .tokenizer import AutoTokenizer
from .pipelines import pipeline  # text/token classification, question answering, text generation (issue 19)
from .training.arguments import TrainingArguments
from .training.sft import SFTConfig, SFTTrainer
from .training.callbacks import EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState
from .training.trainer import EvalPrediction, PredictionOutput, Trainer, TrainOutput, set_seed
from .training.checkpoint import CheckpointWriteError  # a checkpoint or save_model() that found no room (issue 21)
from .training.preemption import Preempted  # raised after the checkpoint that SIGTERM/SIGINT asked for (issue 21)
from .errors import InputError  # a mistake in the user's arguments, data, configs or files (issue 20)
# The reference's helpers that scripts reach for (issue 20): argument parsing, logging, schedules, checkpoints.
from . import trainer_utils, utils
from .hf_argparser import HfArgumentParser
from .models.config import Config as PretrainedConfig
from .trainer_utils import IntervalStrategy, SchedulerType, get_last_checkpoint
from .training.optim import Adafactor
from .training.schedules import (GreedyLR, get_constant_schedule, get_constant_schedule_with_warmup,
                                 get_cosine_schedule_with_warmup, get_cosine_with_hard_restarts_schedule_with_warmup,
                                 get_cosine_with_min_lr_schedule_with_warmup,
                                 get_cosine_with_min_lr_schedule_with_warmup_lr_rate, get_greedy_schedule,
                                 get_inverse_sqrt_schedule, get_linear_schedule_with_warmup,
                                 get_polynomial_decay_schedule_with_warmup, get_reduce_on_plateau_schedule, get_scheduler,
                                 get_wsd_schedule)
from .utils import logging


def login(token: str | None = None, **kwargs) -> None:
    """Log in to the hub (huggingface_hub.login; honours HF_TOKEN and HF_ENDPOINT)."""
    from .hub import login as hub_login
    hub_login(token=token, **kwargs)


# The Keras route (tuneforge[keras]): loaded on first use, so that importing tuneforge never imports Keras.
_KERAS_NAMES = ("TFAutoModel", "TFAutoModelForCausalLM", "TFAutoModelForSequenceClassification", "TFPreTrainedModel",
                "KerasMetricCallback", "PushToHubCallback")


def __getattr__(name: str):
    if name in _KERAS_NAMES:
        from . import keras as keras_route
        return getattr(keras_route, name)
    raise AttributeError(f"module 'tuneforge' has no attribute {name!r}")


__version__ = "0.1.0"
