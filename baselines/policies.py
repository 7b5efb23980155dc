"""Re-exports of :mod:`baselines.lm` under their earlier import path (plug-ins written before the move)."""

from baselines.lm.completions import Completions, PromptState, SamplingConfig
from baselines.lm.policies import Finetune, Policies

__all__ = ["Completions", "Finetune", "Policies", "PromptState", "SamplingConfig"]
