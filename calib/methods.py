"""The method registry and the contract every calibration method follows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lowbit.quantizer import QuantizedWeight, QuantSpec


@dataclass
class CalibContext:
    """What a method gets besides the model."""

    model_dir: Path
    spec: QuantSpec
    seed: int = 0
    data: Path | None = None  # None: the default corpus's calibration split
    progress: bool = True
    settings: dict = field(default_factory=dict)  # method-specific, recorded in the output
    act_bits: int | None = None  # weight-activation runs: linear inputs fake-quantized per token


# A method quantizes every linear named in ``layers`` and returns its codes. It may change
# other parameters of ``model`` in place (e.g. equivalent transformations folded into norms);
# the writer saves the model's remaining tensors as they are afterwards.
MethodFn = Callable[[torch.nn.Module, list[str], CalibContext], dict[str, QuantizedWeight]]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    description: str
    uses_data: bool


METHODS: dict[str, Method] = {}


def register(name: str, description: str, uses_data: bool) -> Callable[[MethodFn], MethodFn]:
    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, description, uses_data)
        return fn

    return wrap
