"""Test-wide settings: offline Hugging Face libraries, one torch thread, no hub retries."""

from __future__ import annotations

import os

for _flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_flag] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch
except ImportError:  # the env suite does not need torch
    pass
else:
    torch.set_num_threads(1)
