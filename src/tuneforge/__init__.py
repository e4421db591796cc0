"""tuneforge: fine-tune pretrained transformer checkpoints with the names of the Transformers fine-tuning guide."""
from .models import AutoConfig, AutoModel, AutoModelForSequenceClassification
from .models.config import Config

__version__ = "0.1.0"
