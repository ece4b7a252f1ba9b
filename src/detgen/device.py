"""The one place where a device name becomes a ``torch.device``."""

from __future__ import annotations

import torch

from detgen.errors import ConfigError


def resolve_device(name: str | None) -> torch.device:
    """Return the torch device for ``name`` ('cpu', 'cuda', 'cuda:1', 'mps' or None for 'cpu').

    Raises ConfigError when the device is unknown or not available on this machine.
    """
    if name is None or name == "":
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: unknown device (expected cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name!r}: MPS is not available on this machine")
    return device
