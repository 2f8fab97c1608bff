"""The record of one architecture: what each stage needs to know about a model family.

As mlc-llm's ``MODELS`` table (``model/model.py``) and GPTQModel's per-model layer tables: the
HF ↔ MLC translations are plain functions, the relax model definition is named by import path
(only the compiler imports it, so this package needs neither torch nor TVM), and the decoder
block's layout tells calibration which modules to scale, pair and skip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Literal

ParamKind = Literal["linear", "embedding", "plain"]


@dataclass(frozen=True)
class MlcParam:
    """One MLC parameter (before quantization) and the HF tensors it is built from.

    ``linear``/``embedding``: ``name`` is the module (``….qkv_proj``), ``sources`` the HF modules
    whose ``.weight`` [rows_i, k] are stacked along N; ``plain``: ``name`` is the full tensor name
    and ``sources`` the HF tensors [rows_i] concatenated along dim 0, stored plus ``offset``
    (Gemma's norms: MLC stores ``1 + w``).
    """

    name: str
    kind: ParamKind
    sources: tuple[str, ...]
    rows: tuple[int, ...]
    k: int = 0
    offset: float = 0.0


@dataclass(frozen=True)
class NormGroup:
    """A norm and the linears that read its output: they share one input, and LET's scale
    ``key`` divides the norm's weight and multiplies theirs."""

    key: str
    norm: str
    linears: tuple[str, ...]


@dataclass(frozen=True)
class BlockLayout:
    """Where the calibration methods find things in one HF decoder block (names inside it).

    ``v_o`` and ``up_down`` are the (producer, consumer) pairs whose channel scaling is exact:
    attention mixes each v channel only across tokens, SwiGLU is linear in each ``up`` channel.
    A fused producer (q/k/v or gate/up in one linear) holds the consumer's channels in its last rows.
    """

    layers: str  # the decoder stack inside the causal LM
    attention: str  # the attention module (its ``head_dim``, ``num_key_value_groups``)
    norm_groups: tuple[NormGroup, ...]
    v_o: tuple[str, str]
    up_down: tuple[str, str]
    clip_skipped: tuple[str, ...]  # linears the clip searches leave alone: clipping q/k hurts
    norm_offset: float = 0.0  # the norms scale by ``norm_offset + weight`` (Gemma: 1)


@dataclass(frozen=True)
class Architecture:
    """Everything lowbit knows about one HF ``model_type``.

    ``mlc_params(hf_config)``: every MLC parameter in MLC's order, with its HF sources;
    ``mlc_model_config(hf_config)``: ``model_config`` of ``mlc-chat-config.json``;
    ``hf_config_from_mlc(model_config)``: the HF ``config.json`` fields that rebuild the PyTorch
    model. ``model`` is the relax ``nn.Module`` as ``"module:Class"``; the class's
    ``config_class.from_dict(model_config, **model_options)`` reads its config.
    ``conv_template``: the conversation template when the model's own chat template is not ChatML:
    a name from ``compiler/chat_config.py``'s table, or the family's own template as the fields of
    MLC's ``Conversation`` that differ from its defaults.
    """

    model_type: str
    layout: BlockLayout
    mlc_params: Callable[[dict], list[MlcParam]]
    mlc_model_config: Callable[[dict], dict]
    hf_config_from_mlc: Callable[[dict], dict]
    model: str
    model_options: Mapping[str, Any] = field(default_factory=dict)
    conv_template: str | Mapping[str, Any] = "LM"
    description: str = ""  # one line for ``lowbit list architectures``

    def model_class(self) -> type:
        """The relax model definition (imports the compiler, hence TVM)."""
        module, _, name = self.model.partition(":")
        return getattr(import_module(module), name)
