"""``lowbit compile MLC_DIR --target T -o LIB``: one library for an MLC weight folder.

The target preset (:mod:`lowbit.targets.presets`) supplies the TVM target, the pipeline, the
compute dtype, the exporter and the device. The library holds the model's functions (MLC's llama
exports plus ``prefill_all_logits``) and ``_metadata`` (:class:`lowbit.artifact.LibraryMetadata`:
target, device, model type, scheme, config, every parameter's name, shape and dtype), so a runtime
opens the right device and refuses an MLC folder that does not match. ``<library>.sha256`` beside
it records the library's checksum, which every load checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from lowbit.architectures import get_architecture
from lowbit.artifact import (
    CHAT_CONFIG,
    METADATA_FUNC,
    LibraryMetadata,
    checksum_line,
    library_checksum_path,
    read_chat_config,
    static_metadata_path,
    system_lib_prefix,
)
from lowbit.cache import atomic_file, check_output
from lowbit.errors import LowbitError
from lowbit.targets.presets import AVX2_MCPUS, CUDA_ARCHS, BuildOptions, Preset, get_preset


@dataclass
class CompileArgs:
    mlc_dir: Path
    target: str = "llvm"
    out: Path = Path("model.so")
    overwrite: bool = False
    cuda_archs: tuple[str, ...] = CUDA_ARCHS
    overrides: dict[str, int] = field(default_factory=dict)  # context_window_size, prefill_chunk_size
    decode_activations: str = "fp"  # int8 / int8x2: decode GEMVs on 8-bit activations (x86-64 AVX2)
    prefill_activations: str = "fp"  # int8: prefill matmuls on 8-bit activations (x86-64 AVX2)
    kv_cache_dtype: str = ""  # float16 / float32 (CPU targets); "": the target's compute dtype

    def display(self) -> str:
        shown = {k: v for k, v in asdict(self).items() if k != "cuda_archs" or self.target == "cuda"}
        return "  ".join(f"{k}={v}" for k, v in shown.items())


def check_int8_activations(option: str, kind: str, target) -> None:
    """Refuse int8 activations (``option``) off x86-64 CPU targets with AVX2."""
    if kind != "fp" and not (target.kind.name == "llvm" and str(target.attrs.get("mcpu", "")) in AVX2_MCPUS):
        raise LowbitError(f"{option} {kind} needs an x86-64 CPU target with AVX2; "
                          f"this build's target is {target}")


def check_kv_cache_dtype(kv_cache_dtype: str, preset: Preset) -> None:
    """Refuse a KV cache dtype other than the compute dtype off CPU targets."""
    if kv_cache_dtype and kv_cache_dtype != preset.compute_dtype and preset.device != "cpu":
        raise LowbitError(f"--kv-cache-dtype {kv_cache_dtype}: target {preset.name} keeps its KV cache "
                          f"in its compute dtype ({preset.compute_dtype}); only CPU targets choose")


def export_model(chat: dict, preset: Preset, target, activations: str = "fp", kv_cache_dtype: str = "",
                 prefill: str = "fp"):
    """(relax IRModule with ``_metadata`` attached, its metadata) for the folder's model;
    ``activations``: the decode GEMVs' (``fp``, or ``int8`` where the scheme allows);
    ``kv_cache_dtype``: the KV cache's storage (default: the compute dtype); ``prefill``: the
    prefill matmuls' activations (recorded in the metadata's config, ``prefill_activations``)."""
    from tvm import relax

    from lowbit.compiler.kernels.attention_cpu import attention_prefetch
    from lowbit.compiler.kernels.gemm_int8 import prefill_activations
    from lowbit.compiler.kernels.gemv_int8 import decode_activations
    from lowbit.compiler.models import create_model
    from lowbit.compiler.schemes import get_scheme

    check_int8_activations("--decode-activations", activations, target)
    check_int8_activations("--prefill-activations", prefill, target)
    check_kv_cache_dtype(kv_cache_dtype, preset)
    arch = get_architecture(chat, CHAT_CONFIG)
    model = create_model(arch, chat["model_config"], get_scheme(chat["quantization"]), target,
                         preset.compute_dtype, kv_cache_dtype, prefill)
    # the fused kernels take the form the target's schedules expect
    with target, decode_activations(activations), prefill_activations(prefill), \
            attention_prefetch(not preset.system_lib):
        mod, named_params = model.export_tvm(spec=model.get_default_spec())
        mod = model.finish_module(mod)
    metadata = LibraryMetadata(
        model_type=chat["model_type"],
        quantization=chat["quantization"],
        target=preset.name,
        device=preset.device,
        compute_dtype=preset.compute_dtype,
        context_window_size=model.cfg.context_window_size,
        prefill_chunk_size=model.cfg.prefill_chunk_size,
        config=model.cfg.to_dict(),
        params=[{"name": n, "shape": [int(d) for d in p.shape], "dtype": str(p.dtype)} for n, p in named_params],
        tvm_target=str(target),
        decode_activations=activations,
        kv_cache_dtype=model.cfg.kv_cache_dtype,
    )
    if preset.system_lib:
        metadata = replace(metadata, system_lib_prefix=system_lib_prefix(
            metadata.model_type, metadata.quantization, metadata.to_json()))
        mod = mod.with_attr("system_lib_prefix", metadata.system_lib_prefix)
    bb = relax.BlockBuilder()
    with bb.function(METADATA_FUNC, params=[]):
        bb.emit_func_output(relax.expr.String(metadata.to_json()))
    mod[METADATA_FUNC] = bb.finalize()[METADATA_FUNC]
    return mod, metadata


# Source-less code objects TVMScript's parser meets on the stack: code it compiled itself, and
# the import machinery of modules imported lazily while it parses.
PSEUDO_FILES = ("<ast>", "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def _memoize_pseudo_file_modules() -> None:
    """TVMScript calls ``inspect.stack()`` for every function it parses. For a frame whose file
    is a pseudo name, ``inspect.getmodule`` finds no module and, since it caches only hits,
    scans all of ``sys.modules`` again each time: with torch loaded, a GPU build spent 60–150 s
    there. Record the same answer, no module, once."""
    import inspect

    for name in PSEUDO_FILES:
        inspect.modulesbyfile.setdefault(name, "")  # sys.modules.get("") is None


def build(chat: dict, preset: Preset, options: BuildOptions | None = None, activations: str = "fp",
          kv_cache_dtype: str = "", prefill: str = "fp"):
    """(executable, metadata): the folder's model compiled for ``preset``, not yet written."""
    from tvm import relax

    _memoize_pseudo_file_modules()
    target = preset.tvm_target(options or BuildOptions())
    mod, metadata = export_model(chat, preset, target, activations, kv_cache_dtype, prefill)
    with target:
        executable = relax.build(mod, target, relax_pipeline=preset.pipeline(target),
                                 system_lib=preset.system_lib)
    return executable, metadata


OVERRIDES = ("context_window_size", "prefill_chunk_size")  # what a build may change in the chat config


def apply_overrides(chat: dict, overrides: dict[str, int]) -> dict:
    """The chat config with ``overrides`` (MLC's ``--overrides``: context_window_size,
    prefill_chunk_size) set in it and in its model config."""
    if not overrides:
        return chat
    return {**chat, **overrides, "model_config": {**chat["model_config"], **overrides}}


def compile_model(args: CompileArgs, progress: bool = True) -> Path:
    """Build ``args.out`` for the MLC folder ``args.mlc_dir``; returns the library path."""
    from tqdm import tqdm

    preset = get_preset(args.target)
    fmt = preset.library_format(args.out)
    check_output(args.out, args.overwrite)
    fmt.check_tools()
    chat = apply_overrides(read_chat_config(args.mlc_dir), args.overrides)
    get_architecture(chat, str(args.mlc_dir))  # refuse before building anything
    check_kv_cache_dtype(args.kv_cache_dtype, preset)
    options = BuildOptions(cuda_archs=tuple(args.cuda_archs))
    steps = tqdm(total=2, desc=f"compile for {preset.name}", disable=not progress)
    executable, metadata = build(chat, preset, options, args.decode_activations, args.kv_cache_dtype,
                                 args.prefill_activations)
    steps.update()
    steps.set_postfix_str(f"write {fmt.what}")
    out = Path(args.out)
    with atomic_file(out, args.overwrite) as tmp:
        fmt.export(executable, Path(tmp), options)
        # the checksum lands first: a crash between the two renames leaves a mismatch, which
        # loading refuses, never an unchecked library
        with atomic_file(library_checksum_path(out)) as record:
            record.write_text(checksum_line(Path(tmp), out.name))
    if preset.system_lib:
        with atomic_file(static_metadata_path(out), overwrite=True) as tmp:
            tmp.write_text(metadata.to_json())
    steps.update()
    steps.close()
    return out
