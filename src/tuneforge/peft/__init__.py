"""Parameter-efficient fine-tuning: LoRA with PEFT's names and file format (lora.py)."""
from .lora import (LoraConfig, LoraModel, PeftModel, PeftModelForCausalLM, PeftModelForFeatureExtraction,
                   PeftModelForSequenceClassification, PeftModelForTokenClassification, TaskType, get_peft_model)

__all__ = ["LoraConfig", "LoraModel", "PeftModel", "PeftModelForCausalLM", "PeftModelForFeatureExtraction",
           "PeftModelForSequenceClassification", "PeftModelForTokenClassification", "TaskType", "get_peft_model"]
