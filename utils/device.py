"""Device selection: ``auto`` picks CUDA when present, otherwise the CPU."""
from __future__ import annotations

import torch

from utils.errors import PECRError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (or a torch.device) -> a usable :class:`torch.device`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PECRError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PECRError(f"--device {name} requested but CUDA is not available here; use --device auto or cpu")
    return device


def set_float32_precision(tf32: bool) -> None:
    """``--tf32``: whether CUDA float32 matrix products and cuDNN convolutions may use TensorFloat-32.
    False (default) keeps true float32 (PyTorch would otherwise use TF32 for cuDNN convolutions)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
