"""Architectures as data: one :class:`Architecture` record per HF ``model_type``.

Calibration, convert, the MLC reader and compile read the record; none names a family. Each
module of this package that defines ``ARCHITECTURE`` is one family, found when the package is
imported, so adding a family means adding its module (and its relax model, if it needs a new one).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Mapping
from importlib import import_module
from typing import Any

from lowbit.architectures.base import Architecture, BlockLayout, MlcParam, NormGroup
from lowbit.errors import LowbitError

__all__ = ["ARCHITECTURES", "Architecture", "BlockLayout", "MlcParam", "NormGroup",
           "get_architecture", "model_architecture"]


def _discover() -> dict[str, Architecture]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        arch = getattr(import_module(f"{__name__}.{info.name}"), "ARCHITECTURE", None)
        if arch is not None:
            found[arch.model_type] = arch
    return dict(sorted(found.items()))


ARCHITECTURES: dict[str, Architecture] = _discover()


def get_architecture(config: Mapping[str, Any], where: str) -> Architecture:
    """The record of ``config``'s ``model_type`` (an HF ``config.json`` or an
    ``mlc-chat-config.json``), or a one-line refusal naming the supported model types."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        arch = ", ".join(config.get("architectures") or []) or model_type
        raise LowbitError(
            f"unsupported architecture {arch!r} (model_type {model_type!r}) in {where}; "
            f"supported model types: {', '.join(ARCHITECTURES)}"
        )
    _check_sizes(config, where)
    return ARCHITECTURES[model_type]


REQUIRED_SIZES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "context_window_size", "prefill_chunk_size")


def _check_sizes(config: Mapping[str, Any], where: str) -> None:
    """The model's dimensions (in an HF config, or an MLC chat config's ``model_config``) are
    positive integers, so a damaged config is one line here, not a TypeError deep in a stage.
    (Configs that only name the model type, as :func:`model_architecture` passes, are skipped.)"""
    sizes = config.get("model_config") if "model_config" in config else config
    if not isinstance(sizes, Mapping) or not any(k in sizes for k in REQUIRED_SIZES):
        return
    for key in REQUIRED_SIZES + OPTIONAL_SIZES:
        value = sizes.get(key)
        if value is None and key in OPTIONAL_SIZES:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LowbitError(f"{where}: {key} must be a positive integer, got {value!r}")


def model_architecture(model: Any) -> Architecture:
    """The record of a transformers causal LM (from its ``config``)."""
    config = model.config
    return get_architecture(
        {"model_type": config.model_type, "architectures": config.architectures},
        type(model).__name__,
    )
