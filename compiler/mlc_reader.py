"""Load an MLC weight folder back into a PyTorch causal LM with dequantized fp32 weights.

Codes are unpacked per the scheme's layout and dequantized as ``s·(q − z)`` (NF3:
``level[q]·s±``) in fp32 (exact, as :func:`lowbit.quantizer.dequantize`), fused q/k/v and
gate/up are split back into HF modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lowbit.architectures import MlcParam, get_architecture
from lowbit.artifact import CHAT_CONFIG, INT8_CODES, read_chat_config
from lowbit.compiler.packing import unpack
from lowbit.compiler.schemes import AsymGroupQuant, NoQuant, Scheme, get_scheme, param_scheme
from lowbit.compiler.tensor_cache import read_tensor_cache
from lowbit.errors import LowbitError
from lowbit.quantizer import QuantizedWeight, fake_quantize_blocks_int8


@dataclass
class MlcWeights:
    chat_config: dict
    scheme: Scheme
    hf_config: dict
    state_dict: dict[str, torch.Tensor]  # HF names, fp32
    metadata: dict


def _array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in arrays:
        raise LowbitError(f"MLC weights lack {name}")
    if tuple(arrays[name].shape) != shape:
        raise LowbitError(f"MLC weight {name} has shape {tuple(arrays[name].shape)}, expected {shape}")
    return arrays[name]


def _dequantized(arrays: dict[str, np.ndarray], p: MlcParam, scheme: Scheme) -> torch.Tensor:
    n = sum(p.rows)
    if isinstance(scheme, NoQuant):
        return torch.from_numpy(_array(arrays, f"{p.name}.weight", (n, p.k))).float()
    words = _array(arrays, f"{p.name}.q_weight", (n, scheme.words_per_row(p.k)))
    scales = _array(arrays, f"{p.name}.q_scale", scheme.spec.scales_shape(n, p.k))
    zeros = None
    if isinstance(scheme, AsymGroupQuant):
        zeros = torch.from_numpy(_array(arrays, f"{p.name}.q_zero", (n, scheme.num_groups(p.k))))
    codes = torch.from_numpy(unpack(words, scheme, p.k))
    qw = QuantizedWeight(codes, torch.from_numpy(scales), zeros, scheme.spec)
    return qw.dequantize(torch.float32)


def read_mlc(folder: Path) -> MlcWeights:
    """Every parameter of an MLC folder as fp32 tensors under HF names (shards verified)."""
    folder = Path(folder)
    chat = read_chat_config(folder)
    arch = get_architecture(chat, str(folder))
    scheme = get_scheme(chat["quantization"])
    hf_config = arch.hf_config_from_mlc(chat["model_config"])
    arrays, metadata = read_tensor_cache(folder)
    state: dict[str, torch.Tensor] = {}
    for p in arch.mlc_params(hf_config):
        if p.kind == "plain":
            t = torch.from_numpy(_array(arrays, p.name, (sum(p.rows),))).float() - p.offset
            names = p.sources
        else:
            t = _dequantized(arrays, p, param_scheme(scheme, p.name, p.kind))
            names = tuple(f"{s}.weight" for s in p.sources)
        state.update(zip(names, torch.split(t, list(p.rows)), strict=True))
    return MlcWeights(chat, scheme, hf_config, state, metadata)


def int8_decode_modules(weights: MlcWeights) -> list[str]:
    """HF names of the linears whose decode GEMV a ``--decode-activations int8`` library runs
    on 8-bit activations: those stored quantized in a layout the int8 kernel supports (a tied
    lm_head goes with the embedding)."""
    from lowbit.compiler.kernels.gemv_int8 import supports

    return _int8_modules(weights, lambda stored, p: supports(stored, p.k))


def int8_prefill_modules(weights: MlcWeights) -> list[str]:
    """HF names of the linears whose matmul over several tokens a ``--prefill-activations int8``
    library runs on 8-bit activations (the lm_head too: ``prefill_all_logits`` runs it over every
    position)."""
    from lowbit.compiler.kernels.gemm_int8 import supports

    return _int8_modules(weights, lambda stored, p: supports(stored, p.k, sum(p.rows)))


def _int8_modules(weights: MlcWeights, kernel_supports) -> list[str]:
    arch = get_architecture(weights.chat_config, CHAT_CONFIG)
    names = []
    for p in arch.mlc_params(weights.hf_config):
        stored = param_scheme(weights.scheme, p.name, p.kind)
        if p.kind == "plain" or not kernel_supports(stored, p):
            continue
        if p.kind != "embedding":
            names += list(p.sources)
        elif weights.hf_config.get("tie_word_embeddings"):
            names.append("lm_head")
    return names


def load_mlc_model(folder: Path, decode_activations: str = "fp", prefill_activations: str = "fp") -> torch.nn.Module:
    """The PyTorch model (fp32, eval mode) whose weights are the MLC folder's, dequantized.

    ``decode_activations="int8"`` (or ``"int8x2"``): the reference of such a library. The linears
    it runs on int8 (:func:`int8_decode_modules`) fake-quantize their input
    (:func:`lowbit.quantizer.fake_quantize_blocks_int8`, in one or two terms) when it is one token per sequence, as
    in incremental decoding with a KV cache or a prefill's lm_head over its last position
    (``logits_to_keep=1``). ``prefill_activations="int8"``: those of
    :func:`int8_prefill_modules` do when it is several tokens (a prefill; the compiled model's
    prefill quantizes a one-token chunk too, which this reference takes for a decode step).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = read_mlc(folder)
    cfg = dict(weights.hf_config)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in weights.state_dict.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise LowbitError(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    modules = dict(model.named_modules())
    if INT8_CODES[decode_activations]:
        hook = partial(_int8_one_token, terms=INT8_CODES[decode_activations])
        for name in int8_decode_modules(weights):
            modules[name].register_forward_pre_hook(hook)
    if prefill_activations == "int8":
        for name in int8_prefill_modules(weights):
            modules[name].register_forward_pre_hook(_int8_several_tokens)
    return model.eval()


def _int8_one_token(_module: torch.nn.Module, args: tuple, terms: int) -> tuple:
    x = args[0]
    return (fake_quantize_blocks_int8(x, terms) if x.shape[-2] == 1 else x, *args[1:])


def _int8_several_tokens(_module: torch.nn.Module, args: tuple) -> tuple:
    x = args[0]
    return (fake_quantize_blocks_int8(x) if x.shape[-2] > 1 else x, *args[1:])
