"""Model definitions in ``tvm.relax.frontend.nn``, registered by MLC ``model_type``."""

from __future__ import annotations

from typing import Any

from tvm.target import Target

from lowbit.compiler.models.llama import LlamaConfig, LlamaForCausalLM
from lowbit.compiler.schemes import Scheme
from lowbit.errors import LowbitError

MODELS = {"llama": LlamaForCausalLM, "qwen2": LlamaForCausalLM}


def create_model(
    model_type: str, config: dict[str, Any], scheme: Scheme, target: Target, dtype: str = "float32"
) -> LlamaForCausalLM:
    """The nn.Module for ``model_type`` with ``config`` (HF or MLC names) stored as ``scheme``."""
    if model_type not in MODELS:
        raise LowbitError(f"unsupported model type {model_type!r} (supported: {', '.join(MODELS)})")
    return MODELS[model_type](LlamaConfig.from_dict(model_type, config), scheme, target, dtype)
