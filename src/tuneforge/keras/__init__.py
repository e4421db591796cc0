"""The Keras 3 route (torch backend) over tuneforge's own models: `from tuneforge import
TFAutoModelForSequenceClassification` loads this package, which loads Keras on the torch backend."""
from .backend import load_keras

load_keras()

from .callbacks import KerasMetricCallback, PushToHubCallback  # noqa: E402
from .data import KerasDataset  # noqa: E402
from .model import (TFAutoModel, TFAutoModelForCausalLM, TFAutoModelForSequenceClassification,  # noqa: E402
                    TFPreTrainedModel)

__all__ = ["KerasDataset", "KerasMetricCallback", "PushToHubCallback", "TFAutoModel", "TFAutoModelForCausalLM",
           "TFAutoModelForSequenceClassification", "TFPreTrainedModel"]
