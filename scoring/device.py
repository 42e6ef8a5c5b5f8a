"""Where tensors run: CUDA when present, else CPU, with the dtype that is fast there."""

from __future__ import annotations

import torch

from catalog.choices import DTYPES as DTYPE_NAMES
from catalog.errors import UserError

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def pick_device(requested: str = "auto") -> str:
    """CUDA when present (or asked for), else CPU."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested} asked for, but torch sees no CUDA device here")
    return requested


def pick_dtype(device: str, requested: str | None = None) -> torch.dtype:
    """bfloat16 weights on CUDA; float32 on CPU (bfloat16 is 6x slower on CPUs without bf16 units)."""
    if requested is not None:
        if requested not in DTYPES:
            raise UserError(f"unknown --dtype {requested!r}; use one of {', '.join(DTYPES)}")
        return DTYPES[requested]
    return torch.bfloat16 if device.startswith("cuda") else torch.float32
