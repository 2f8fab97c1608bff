"""Model definitions in ``tvm.relax.frontend.nn``; an architecture record names its own."""

from __future__ import annotations

from typing import Any

from tvm.relax.frontend import nn
from tvm.target import Target

from lowbit.architectures import Architecture
from lowbit.compiler.schemes import Scheme


def create_model(
    arch: Architecture, config: dict[str, Any], scheme: Scheme, target: Target, dtype: str = "float32"
) -> nn.Module:
    """``arch``'s nn.Module with ``config`` (HF or MLC names) stored as ``scheme``."""
    cls = arch.model_class()
    return cls(cls.config_class.from_dict(config, **arch.model_options), scheme, target, dtype)
