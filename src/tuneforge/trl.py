"""TRL's import path for what tuneforge implements of it: `from tuneforge.trl import SFTTrainer, SFTConfig` where TRL
code says `from trl import SFTTrainer, SFTConfig`."""
from .training.sft import DataCollatorForLanguageModeling, SFTConfig, SFTTrainer, pack_bfd

__all__ = ["DataCollatorForLanguageModeling", "SFTConfig", "SFTTrainer", "pack_bfd"]
