"""Biases a Llama-family block lacks: LET's channel-wise shift (:mod:`lowbit.calib.let`) folds
into a bias on an RMSNorm and on the linears behind it. Calibration adds them before training;
loading a fused checkpoint or a block checkpoint attaches every ``X.bias`` tensor that module
``X`` has no slot for."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class _NormBias:
    """Mixin: the wrapped norm's output plus a per-channel bias."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states) + self.bias


_BIASED: dict[type, type] = {}


def _biased_class(cls: type) -> type:
    if cls not in _BIASED:
        _BIASED[cls] = type(f"Biased{cls.__name__}", (_NormBias, cls), {})
    return _BIASED[cls]


def has_bias(module: torch.nn.Module) -> bool:
    return getattr(module, "bias", None) is not None


def add_bias(module: torch.nn.Module) -> None:
    """Give ``module`` (an ``nn.Linear`` or a norm with a ``weight`` [C]) a zero bias, trainable
    like its weight; a norm's class becomes a subclass that adds it to the output."""
    if has_bias(module):
        return
    w = module.weight
    if isinstance(module, torch.nn.Linear):
        bias = torch.zeros(module.out_features, dtype=w.dtype, device=w.device)
    elif w.dim() == 1:
        module.__class__ = _biased_class(type(module))
        bias = torch.zeros_like(w)
    else:
        raise TypeError(f"cannot add a bias to {type(module).__name__}")
    module.bias = torch.nn.Parameter(bias, requires_grad=w.requires_grad)


def attach_biases(model: torch.nn.Module, tensor_names: Iterable[str]) -> list[str]:
    """Add a zero bias to each module ``X`` of ``model`` that lacks one while ``tensor_names``
    holds ``X.bias``; return the names of the modules changed."""
    modules = dict(model.named_modules())
    added = []
    for name in tensor_names:
        owner = name.removesuffix(".bias")
        if owner != name and owner in modules and not has_bias(modules[owner]):
            add_bias(modules[owner])
            added.append(owner)
    return added
