"""``lowbit compile MLC_DIR --target llvm -o LIB.so``: one shared library for an MLC weight folder.

The library holds the model's functions (MLC's llama exports plus ``prefill_all_logits``) and a
``_metadata`` function returning JSON (model type, scheme, config, every parameter's name, shape
and dtype), so a runtime can refuse an MLC folder that does not match it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lowbit.cache import atomic_file, check_output
from lowbit.errors import LowbitError
from lowbit.runtime.engine import METADATA_FUNC

COMPUTE_DTYPE = "float32"  # activations, KV cache and accumulation on CPU


@dataclass
class CompileArgs:
    mlc_dir: Path
    target: str = "llvm"
    out: Path = Path("model.so")
    overwrite: bool = False

    def display(self) -> str:
        return "  ".join(f"{k}={v}" for k, v in asdict(self).items())


def read_chat_config(mlc_dir: Path) -> dict:
    path = Path(mlc_dir) / "mlc-chat-config.json"
    if not path.is_file():
        raise LowbitError(f"{mlc_dir} is not an MLC model folder (no mlc-chat-config.json)")
    chat = json.loads(path.read_text())
    for key in ("model_type", "quantization", "model_config"):
        if key not in chat:
            raise LowbitError(f"{path} has no {key!r}")
    return chat


def export_model(model_type: str, model_config: dict, scheme_name: str, target):
    """(relax IRModule with ``_metadata`` attached, metadata dict) for one model and scheme."""
    from tvm import relax

    from lowbit.compiler.models import create_model
    from lowbit.compiler.schemes import get_scheme

    model = create_model(model_type, model_config, get_scheme(scheme_name), target, COMPUTE_DTYPE)
    mod, named_params = model.export_tvm(spec=model.get_default_spec())
    metadata = {
        "format": 1,
        "model_type": model_type,
        "quantization": scheme_name,
        "compute_dtype": COMPUTE_DTYPE,
        "target": str(target),
        "context_window_size": model.cfg.context_window_size,
        "prefill_chunk_size": model.cfg.prefill_chunk_size,
        "config": model.cfg.to_dict(),
        "params": [
            {"name": n, "shape": [int(d) for d in p.shape], "dtype": str(p.dtype)} for n, p in named_params
        ],
    }
    bb = relax.BlockBuilder()
    with bb.function(METADATA_FUNC, params=[]):
        bb.emit_func_output(relax.expr.String(json.dumps(metadata)))
    mod[METADATA_FUNC] = bb.finalize()[METADATA_FUNC]
    return mod, metadata


def compile_model(args: CompileArgs, progress: bool = True) -> Path:
    """Build ``args.out`` for the MLC folder ``args.mlc_dir``; returns the library path."""
    from tqdm import tqdm

    from lowbit.compiler.pipeline import build
    from lowbit.targets import get_preset

    preset = get_preset(args.target)
    check_output(args.out, args.overwrite)
    chat = read_chat_config(args.mlc_dir)
    steps = tqdm(total=3, desc="compile", disable=not progress)
    target = preset.tvm_target()
    steps.set_postfix_str("export")
    mod, _ = export_model(chat["model_type"], chat["model_config"], chat["quantization"], target)
    steps.update()
    steps.set_postfix_str(f"build {target}")
    executable = build(mod, target)
    steps.update()
    steps.set_postfix_str("link")
    with atomic_file(Path(args.out), args.overwrite) as tmp:
        preset.export(executable, Path(tmp))
    steps.update()
    steps.close()
    return Path(args.out)
