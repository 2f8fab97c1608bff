"""Model definitions in ``tvm.relax.frontend.nn``; an architecture record names its own."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tvm.relax.frontend import nn
from tvm.target import Target

from lowbit.architectures import Architecture
from lowbit.compiler.schemes import Scheme


def create_model(
    arch: Architecture, config: dict[str, Any], scheme: Scheme, target: Target, dtype: str = "float32",
    kv_cache_dtype: str = "", prefill_activations: str = "fp",
) -> nn.Module:
    """``arch``'s nn.Module with ``config`` (HF or MLC names) stored as ``scheme``, computing in
    ``dtype`` with its KV cache in ``kv_cache_dtype`` (default: ``dtype``) and its prefill
    matmuls on ``prefill_activations``."""
    cls = arch.model_class()
    cfg = replace(cls.config_class.from_dict(config, **arch.model_options), kv_cache_dtype=kv_cache_dtype or dtype,
                  prefill_activations=prefill_activations)
    return cls(cfg, scheme, target, dtype)
