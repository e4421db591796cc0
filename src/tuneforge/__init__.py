"""tuneforge: fine-tune pretrained transformer checkpoints with the names of the Transformers fine-tuning guide."""
from . import metrics
from .data import DataCollatorForLanguageModeling, DataCollatorWithPadding, default_data_collator
from .models import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
from .models.generation import GenerationConfig
from .models.config import Config
from .tokenizer import AutoTokenizer
from .training.arguments import TrainingArguments
from .training.callbacks import EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState
from .training.trainer import EvalPrediction, PredictionOutput, Trainer, TrainOutput, set_seed


def login(token: str | None = None, **kwargs) -> None:
    """Log in to the hub (huggingface_hub.login; honours HF_TOKEN and HF_ENDPOINT)."""
    from .hub import login as hub_login
    hub_login(token=token, **kwargs)


__version__ = "0.1.0"
