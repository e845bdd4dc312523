"""Where a model runs and in what precision: device and dtype names, checked, and the cast.

Commands take `--device auto|cpu|cuda|cuda:N` and `--dtype auto|float32|bfloat16|float16`; the
training config takes `device` and `precision` / `decoder_dtype`. Every name is resolved here, so
a GPU asked for on a machine without one is the same named error everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
# Accepted dtype names (both spellings), and what "auto" becomes on each device type.
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DTYPE_NAMES = "auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16)"


def resolve_device(name: str) -> torch.device:
    """'auto' (a GPU if torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N' -> a device;
    a GPU that is not there is an error naming what torch does see."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, colon, index = name.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ValueError(f"unknown device {name!r}: use {DEVICE_NAMES}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ValueError(f"device {name!r} was asked for, but torch sees {count} CUDA device(s): cuda:0..{count - 1}")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype name -> torch dtype. 'auto': bfloat16 on a GPU that computes it natively, float32
    elsewhere (CPUs compute float32 faster than bfloat16)."""
    name = name.strip().lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use {DTYPE_NAMES}")
    return DTYPES[name]


def cast_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module.to(dtype)` for floating parameters and buffers, except the RoPE frequency tables
    (`inv_freq`), which stay float32 as transformers keeps them: rounded to bfloat16 (a relative
    error up to 2^-8) a frequency of 0.5 would put position 8,000 off by up to 16 radians.
    Parameters keep their identity (their data is replaced), so references to them stay valid."""
    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != dtype and "inv_freq" not in name:
                sub._buffers[name] = buffer.to(dtype)
    return module
