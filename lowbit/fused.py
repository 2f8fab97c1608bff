"""The fused checkpoint: what every calibration method writes and the converter reads.

An HF-style folder (``config.json``, tokenizer files) whose ``model.safetensors`` holds, for
each quantized linear ``L`` (e.g. ``model.layers.0.self_attn.q_proj``):

* ``L.codes``  uint8   [N, K]  integer codes, one per byte
* ``L.scales`` float16 [N, G]  G = ceil(K / group) (1 when per-channel)
* ``L.zeros``  uint8   [N, G]  integer zero points (asymmetric only)

NF3 checkpoints (``codebook: "nf3"``) store codes 0–7 indexing :data:`lowbit.quantizer.NF3_LEVELS`,
``L.scales`` float16 [N, G, 2] (the positive levels' scale, then the negative levels'), no zeros.

and every other tensor (norms, embeddings, biases) in its original dtype, plus
``quantization_config.json``. Biases the architecture lacks (a LET shift's, on norms and
linears) are stored like any bias and attached on load. ``docs/FORMAT.md`` is the normative description.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lowbit import __version__
from lowbit.architectures import get_architecture, model_architecture
from lowbit.artifact import read_json, sha256_file
from lowbit.biases import attach_biases
from lowbit.errors import LowbitError
from lowbit.models import read_config
from lowbit.quantizer import QuantizedWeight, QuantSpec, token_quant_pre_hook

QCONFIG_NAME = "quantization_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "lowbit-fused"
FORMAT_VERSION = 1
QCONFIG_TYPES = {  # what readers use of quantization_config.json, and its JSON types
    "method": (str,), "bits": (int,), "group_size": (int,), "sym": (bool,),
    "codebook": (str, type(None)), "act_bits": (int, type(None)), "layers": (list,),
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass
class FusedModel:
    model: torch.nn.Module  # fake-quant weights in place, eval mode
    qconfig: dict
    quantized: dict[str, QuantizedWeight]


def quantized_linear_names(model: torch.nn.Module) -> list[str]:
    """The linears a method quantizes: every nn.Linear inside the decoder layers."""
    prefix = model_architecture(model).layout.layers + "."
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.startswith(prefix)
    ]


def spec_from_qconfig(qconfig: dict) -> QuantSpec:
    return QuantSpec(qconfig["bits"], qconfig["group_size"], qconfig["sym"],
                     qconfig.get("codebook"))


def make_qconfig(method: str, spec: QuantSpec, layers: list[str], act_bits: int | None = None,
                 **extra: object) -> dict:
    """The ``quantization_config.json`` body; ``extra`` holds corpus split, seed, settings.
    ``act_bits`` (None: weight-only) makes every quantized linear's input fake-quantized per
    token when the checkpoint is loaded for evaluation."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "method": method,
        "bits": spec.bits,
        "group_size": spec.group_size,
        "sym": spec.sym,
        "codebook": spec.codebook,
        "act_bits": act_bits,
        "layers": layers,
        "tool": f"lowbit {__version__}",
        **extra,
    }


def save_fused(
    out: Path,
    model: torch.nn.Module,
    quantized: dict[str, QuantizedWeight],
    qconfig: dict,
    source: Path,
) -> None:
    """Write the fused folder into ``out`` (an empty folder; callers make it atomic)."""
    tensors: dict[str, torch.Tensor] = {}
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in state.items():
        owner = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and owner in quantized:
            continue
        if tied and name == "lm_head.weight":
            continue
        tensors[name] = t.detach().contiguous()
    for name, qw in quantized.items():
        tensors[f"{name}.codes"] = qw.codes.contiguous()
        tensors[f"{name}.scales"] = qw.scales.to(torch.float16).contiguous()
        if qw.zeros is not None:
            tensors[f"{name}.zeros"] = qw.zeros.contiguous()
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for fname in TOKENIZER_FILES:
        if (Path(source) / fname).is_file():
            shutil.copy2(Path(source) / fname, out / fname)
    sha256 = {f.name: sha256_file(f) for f in sorted(out.iterdir())}
    (out / QCONFIG_NAME).write_text(json.dumps({**qconfig, "sha256": sha256}, indent=2))


def verify_files(folder: Path, qconfig: dict) -> None:
    """Every file the checkpoint's ``sha256`` lists is present and unchanged (checkpoints written
    before checksums list none)."""
    listed = qconfig.get("sha256", {})
    if not isinstance(listed, dict):
        raise LowbitError(f"{Path(folder) / QCONFIG_NAME}: 'sha256' is not an object")
    for name, want in listed.items():
        path = Path(folder) / name
        if not path.is_file():
            raise LowbitError(f"fused checkpoint {folder} lacks {name}")
        if sha256_file(path) != want:
            raise LowbitError(f"{path} does not match its sha256 in {QCONFIG_NAME} (truncated or corrupted)")


def read_qconfig(folder: Path) -> dict:
    path = Path(folder) / QCONFIG_NAME
    if not path.is_file():
        raise LowbitError(f"{folder} is not a fused checkpoint (no {QCONFIG_NAME})")
    qconfig = read_json(path, "quantization config")
    if not isinstance(qconfig, dict):
        raise LowbitError(f"{path} is not a JSON object")
    if qconfig.get("format") != FORMAT_NAME or qconfig.get("format_version") != FORMAT_VERSION:
        raise LowbitError(
            f"{path}: expected format {FORMAT_NAME} v{FORMAT_VERSION}, "
            f"found {qconfig.get('format')} v{qconfig.get('format_version')}"
        )
    return qconfig


def read_quantized(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
    """(qconfig, plain tensors, quantized linears) of a fused folder, shapes checked."""
    folder = Path(folder)
    qconfig = read_qconfig(folder)
    verify_files(folder, qconfig)
    qpath = folder / QCONFIG_NAME
    try:
        for key, types in QCONFIG_TYPES.items():
            if not isinstance(qconfig.get(key), types) or (int in types and isinstance(qconfig[key], bool)):
                raise TypeError(f"{key!r} is {qconfig.get(key)!r}")
        spec = spec_from_qconfig(qconfig)
        layers = qconfig["layers"]
        if not all(isinstance(n, str) for n in layers):
            raise TypeError("'layers' is not a list of names")
    except (KeyError, TypeError, ValueError) as e:
        raise LowbitError(f"{qpath} is not a valid quantization config ({type(e).__name__}: {e})") from None
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise LowbitError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LowbitError(f"{path} is not a valid safetensors file ({e})") from None
    quantized: dict[str, QuantizedWeight] = {}
    for name in layers:
        try:
            codes = tensors.pop(f"{name}.codes")
            scales = tensors.pop(f"{name}.scales")
            zeros = tensors.pop(f"{name}.zeros") if spec.has_zeros else None
        except KeyError as e:
            raise LowbitError(f"{path}: missing tensor {e.args[0]}") from None
        if codes.dim() != 2 or codes.dtype != torch.uint8:
            raise LowbitError(f"{path}: {name}.codes is {codes.dtype}{list(codes.shape)}, not a uint8 matrix")
        n, k = codes.shape
        want = spec.scales_shape(n, k)
        if tuple(scales.shape) != want or (zeros is not None and tuple(zeros.shape) != want):
            raise LowbitError(f"{path}: {name} scales/zeros shape {tuple(scales.shape)} != {want}")
        quantized[name] = QuantizedWeight(codes, scales, zeros, spec)
    return qconfig, tensors, quantized


def load_fused(folder: Path) -> FusedModel:
    """Build the PyTorch model with ``s·(q − z)`` weights (bit-exact fake-quant weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    qconfig, tensors, quantized = read_quantized(folder)
    get_architecture(read_config(folder), str(folder))  # one line for a bad config.json
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for name, qw in quantized.items():
        tensors[f"{name}.weight"] = qw.dequantize(torch.float32)
    if getattr(config, "tie_word_embeddings", False):
        tensors.setdefault("lm_head.weight", tensors["model.embed_tokens.weight"])
    attach_biases(model, tensors)  # a LET shift's biases on norms and linears
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise LowbitError(
            f"{folder}: tensors do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    _materialize_buffers(model, config)
    if qconfig.get("act_bits"):
        quantize_linear_inputs(model, list(quantized), int(qconfig["act_bits"]))
    return FusedModel(model.eval(), qconfig, quantized)


def quantize_linear_inputs(model: torch.nn.Module, names: list[str], bits: int) -> None:
    """Fake-quantize the input of each named linear per token (``bits``, e.g. W4A4)."""
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_pre_hook(token_quant_pre_hook(bits))


def _materialize_buffers(model: torch.nn.Module, config) -> None:
    """Non-persistent buffers stay on meta after a meta-device build: rebuild them (RoPE's
    ``inv_freq``, Gemma's embedding scale)."""
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and mod.inv_freq.is_meta:
            fresh = type(mod)(config=config)
            mod.inv_freq = fresh.inv_freq
            if hasattr(fresh, "original_inv_freq"):
                mod.original_inv_freq = fresh.original_inv_freq
        if hasattr(mod, "scalar_embed_scale") and mod.embed_scale.is_meta:
            mod.embed_scale = torch.tensor(mod.scalar_embed_scale)
    left = [name for name, b in model.named_buffers() if b.is_meta]
    if left:
        raise AssertionError(f"buffers left on the meta device: {left[:3]}")  # a new family's buffer
