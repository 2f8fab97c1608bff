"""The ``lowbit`` command line: parses arguments and calls the interface functions."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from lowbit.artifact import DECODE_ACTIVATIONS, KV_CACHE_DTYPES, PREFILL_ACTIVATIONS
from lowbit.errors import LowbitError


class LowbitGroup(click.Group):
    """Turns :class:`LowbitError` into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LowbitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=LowbitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowbit")
def main() -> None:
    """lowbit: calibrate, convert, compile and run 2–4-bit LLMs."""
    from lowbit.cache import exit_on_sigterm

    exit_on_sigterm()


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses ``nan`` and ``inf`` (they pass its bounds)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


class IntChoice(click.Choice):
    """One of a fixed set of integers, converted to ``int``."""

    def __init__(self, values: tuple[int, ...]):
        super().__init__([str(v) for v in values])

    def convert(self, value, param, ctx):
        return int(super().convert(str(value), param, ctx))


class GroupSize(click.ParamType):
    """A positive group size, or -1 (also ``pc``/``channel``) for one group per channel."""

    name = "group_size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if value in ("-1", "pc", "channel"):
            return -1
        try:
            size = int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer, -1, pc or channel.", param, ctx)
        if size < 1:
            self.fail(f"{size} is not a positive group size (or -1 per channel).", param, ctx)
        return size


class Overrides(click.ParamType):
    """MLC's ``--overrides``: ``key=value;key=value`` of positive integers, keys from compile's OVERRIDES."""

    name = "overrides"

    def convert(self, value, param, ctx):
        from lowbit.compiler.compile import OVERRIDES

        if isinstance(value, dict):
            return value
        parsed: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in value.split(";"))):
            key, sep, number = item.partition("=")
            key = key.strip()
            if not sep or key not in OVERRIDES:
                self.fail(f"{item!r}: expected KEY=N with KEY one of {', '.join(OVERRIDES)}.", param, ctx)
            try:
                parsed[key] = int(number)
            except ValueError:
                self.fail(f"{item!r}: {number.strip()!r} is not an integer.", param, ctx)
            if parsed[key] < 1:
                self.fail(f"{item!r}: {key} must be positive.", param, ctx)
        return parsed


# lowbit.quantizer's SUPPORTED_BITS and ACT_BITS (not imported here: that module loads torch)
BITS = (2, 3, 4, 6, 8)
ACT_BITS = (4, 6, 8)
SEED = click.IntRange(0, 2**32 - 1)
POSITIVE = click.IntRange(min=1)
WINDOW_TOKENS = click.IntRange(min=2)  # a window of n tokens scores n - 1 predictions


def _set_threads(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    if value is not None:
        from lowbit.runtime.engine import cpu_threads

        cpu_threads(value)


THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(1, 1024), expose_value=False, callback=_set_threads,
    help="CPU threads of the compiled kernels  [default: $TVM_NUM_THREADS, else every CPU]")


@main.command()
@click.argument("model")
@click.option("--method", default="rtn", show_default=True, help="see `lowbit list methods`")
@click.option("--bits", type=IntChoice(BITS), default="4", show_default=True)
@click.option("--group-size", type=GroupSize(), default="128", show_default=True,
              help="32/40/64/128, or -1 per channel")
@click.option("--sym", is_flag=True, help="symmetric (MLC's convention) instead of asymmetric")
@click.option("--nf3", is_flag=True,
              help="BitDistiller's NF3 codebook (3 bits, two scales per group; rtn, bitdistiller)")
@click.option("--act-bits", type=IntChoice(ACT_BITS),
              help="also fake-quantize every linear's input per token (4, 6, 8), e.g. W4A4")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="fused checkpoint folder")
@click.option("--overwrite", is_flag=True, help="replace OUT if it exists")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--data", type=click.Path(path_type=Path), help="calibration corpus (.txt/.jsonl)")
@click.option("--preset", type=click.Choice(["small", "paper"]),
              help="calibration budget: small (32×512 tokens, few epochs; default) or paper")
@click.option("--nsamples", type=POSITIVE, help="calibration windows (overrides the preset)")
@click.option("--seqlen", type=WINDOW_TOKENS, help="tokens per calibration window (overrides the preset)")
@click.option("--epochs", type=POSITIVE, help="omniquant: epochs per block (overrides the preset)")
@click.option("--let", is_flag=True,
              help="omniquant: learnable equivalent transformation (channel-wise scaling)")
@click.option("--shift", is_flag=True,
              help="omniquant --let / smoothquant, with --act-bits: also a channel-wise shift")
@click.option("--alpha", type=FiniteFloatRange(0.0, 1.0),
              help="omniquant --let / smoothquant: migration strength of the initial scales")
@click.option("--act-order", is_flag=True,
              help="gptq: visit columns by decreasing Hessian diagonal")
@click.option("--steps", type=POSITIVE, help="bitdistiller: optimizer steps (overrides the preset)")
@click.option("--lr", type=FiniteFloatRange(min=0.0, min_open=True), help="omniquant, bitdistiller: learning rate (overrides the preset)")
@click.option("--loss", type=click.Choice(["cakld", "fkl", "rkl", "ce"]),
              help="bitdistiller: distillation loss (default cakld; the others for ablations)")
@click.option("--instructions", type=click.Path(exists=True, dir_okay=False),
              help="bitdistiller: extra teacher prompts (.jsonl with instruction/input, or .txt)")
@click.option("--bf16/--no-bf16", default=None,
              help="bitdistiller: bf16 autocast of the forward passes (default: on where CUDA computes bf16)")
@click.option("--resume", is_flag=True, help="continue an interrupted run from its checkpoints")
def calibrate(model: str, method: str, bits: int, group_size: int, sym: bool, nf3: bool,
              act_bits: int | None, out: Path, overwrite: bool, seed: int, data: Path | None,
              preset: str | None,
              nsamples: int | None, seqlen: int | None, epochs: int | None, let: bool,
              shift: bool, alpha: float | None, act_order: bool, steps: int | None,
              lr: float | None, loss: str | None, instructions: str | None, bf16: bool | None,
              resume: bool) -> None:
    """Quantize MODEL (HF folder, GGUF or bundled name) into a fused checkpoint."""
    from lowbit.calib import CalibrateArgs
    from lowbit.calib import calibrate as run

    options = {"preset": preset, "nsamples": nsamples, "seqlen": seqlen, "epochs": epochs,
               "let": int(let) or None, "shift": int(shift) or None, "alpha": alpha, "act_order": int(act_order) or None,
               "steps": steps, "lr": lr, "loss": loss, "instructions": instructions,
               "bf16": None if bf16 is None else int(bf16), "resume": int(resume) or None}
    settings = {k: v for k, v in options.items() if v is not None}
    args = CalibrateArgs(model, method, bits, group_size, sym, out, overwrite, seed, data,
                         settings=settings, act_bits=act_bits, codebook="nf3" if nf3 else None)
    click.echo(f"calibrate: {args.display()}", err=True)
    click.echo(f"wrote {run(args)}")


@main.group(name="eval", cls=LowbitGroup)
def eval_() -> None:
    """Evaluate a model (HF folder, GGUF, bundled name or fused checkpoint)."""


@eval_.command()
@click.argument("model")
@click.option("--split", default="test", show_default=True,
              type=click.Choice(["calibration", "validation", "test"]))
@click.option("--seqlen", type=WINDOW_TOKENS, default=512, show_default=True)
@click.option("--windows", type=POSITIVE, default=64, show_default=True)
@click.option("--batch-size", type=POSITIVE, default=4, show_default=True)
@click.option("--data", type=click.Path(path_type=Path), help="corpus file (.txt/.jsonl)")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="JSON result file  [default: lowbit-eval/NAME-ppl-SPLIT.json]")
@click.option("--overwrite", is_flag=True, help="replace the result file if it exists")
@click.option("--model-lib", type=click.Path(path_type=Path),
              help="compiled library (lowbit compile); MODEL is then its MLC folder")
@click.option("--decode", is_flag=True,
              help="with --model-lib: score every position through one-token decode steps, as "
                   "generation runs (what --decode-activations int8 changes)")
@THREADS_OPTION
def ppl(model: str, split: str, seqlen: int, windows: int, batch_size: int,
        data: Path | None, output: Path | None, overwrite: bool, model_lib: Path | None, decode: bool) -> None:
    """Perplexity of MODEL on non-overlapping windows from the start of a corpus split."""
    from lowbit.cache import atomic_file, check_output
    from lowbit.evaluate.run import evaluate_compiled_perplexity, evaluate_perplexity

    if decode and model_lib is None:
        raise click.UsageError("--decode needs --model-lib")
    out = output or Path("lowbit-eval") / f"{Path(model).name}-ppl-{split}.json"
    check_output(out, overwrite)  # before minutes of evaluation
    if model_lib is not None:
        result = evaluate_compiled_perplexity(Path(model), model_lib, split, seqlen, windows, data,
                                              decode=decode)
    else:
        result = evaluate_perplexity(model, split, seqlen, windows, batch_size, data)
    click.echo(json.dumps(result, indent=2))
    with atomic_file(out, overwrite) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"perplexity {result['ppl']:.4f}  (wrote {out})", err=True)


@eval_.command()
@click.argument("model")
@click.option("--tasks", default="piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq",
              show_default=True, help="comma-separated task names")
@click.option("--limit", type=click.IntRange(min=1), help="score the first N documents per task")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="JSON result file  [default: lowbit-eval/NAME-tasks.json]")
@click.option("--overwrite", is_flag=True, help="replace the result file if it exists")
def tasks(model: str, tasks: str, limit: int | None, output: Path | None, overwrite: bool) -> None:
    """Zero-shot accuracy of MODEL (lm-eval protocol and prompts, task data from local wheels)."""
    from lowbit.cache import atomic_file, check_output
    from lowbit.evaluate.zeroshot import TasksArgs, evaluate_tasks

    out = output or Path("lowbit-eval") / f"{Path(model).name}-tasks.json"
    check_output(out, overwrite)  # before the evaluation
    result = evaluate_tasks(TasksArgs(model, tasks, limit))
    click.echo(json.dumps(result, indent=2))
    with atomic_file(out, overwrite) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in result["tasks"].items():
        norm = "" if r["acc_norm"] is None else f"  acc_norm {r['acc_norm']:.4f}"
        click.echo(f"{name:14s} n={r['n']:<5d} acc {r['acc']:.4f}{norm}", err=True)
    click.echo(f"(wrote {out})", err=True)


@main.command()
@click.argument("model")
@click.option("--scheme", required=True, help="MLC scheme: q4f16_1, q4f32_1, q3f16_1, q0f16, q0f32, w{2,3,4}a16g{32,64,128}asym, "
              "nf3a16g{64,128}; the last two families with an 8-bit embedding/lm_head as NAME_q8head")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="MLC weight folder")
@click.option("--overwrite", is_flag=True, help="replace OUT if it exists")
@click.option("--conv-template", default=None, help="chatml or LM (default: chatml for ChatML models)")
def convert(model: str, scheme: str, out: Path, overwrite: bool, conv_template: str | None) -> None:
    """Convert MODEL (fused checkpoint, HF folder, GGUF or bundled name) to MLC's weight format."""
    from lowbit.compiler.convert import ConvertArgs
    from lowbit.compiler.convert import convert as run

    args = ConvertArgs(model, scheme, out, overwrite, conv_template)
    click.echo(f"convert: {args.display()}", err=True)
    result = run(args)
    click.echo(result.summary(), err=True)
    click.echo(f"wrote {result.out}")


@main.command(name="compile")
@click.argument("mlc_dir", type=click.Path(path_type=Path))
@click.option("--target", default="llvm", show_default=True, help="target preset (see `lowbit list targets`)")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="library file; its suffix picks the format where a target has several (.so, .a, .tar, .dylib)")
@click.option("--arch", "archs", help="cuda: comma-separated SM architectures (default sm_80,sm_86,sm_89,sm_90a)")
@click.option("--overrides", type=Overrides(), default="",
              help="MLC-style 'context_window_size=N;prefill_chunk_size=M' baked into the library")
@click.option("--decode-activations", type=click.Choice(DECODE_ACTIVATIONS), default="fp", show_default=True,
              help="int8: decode's 4-, 3- and 2-bit matmuls quantize activations per 32 to 8 bits and "
                   "use integer dot products (x86-64 AVX2); int8x2: two 8-bit codes per activation "
                   "(the second for the first's rounding error), near fp accuracy")
@click.option("--prefill-activations", type=click.Choice(PREFILL_ACTIVATIONS), default="fp", show_default=True,
              help="int8: prefill's 4-, 3- and 2-bit matmuls likewise, as int8 GEMMs (x86-64 AVX2; "
                   "AVX-512 VNNI where the host has it)")
@click.option("--kv-cache-dtype", type=click.Choice(KV_CACHE_DTYPES), default=None,
              help="the KV cache's storage on CPU targets: float16 halves the bytes attention reads "
                   "per token (default: the target's compute dtype)")
@click.option("--overwrite", is_flag=True, help="replace OUT if it exists")
def compile_(mlc_dir: Path, target: str, out: Path, archs: str | None, overrides: dict,
             decode_activations: str, prefill_activations: str, kv_cache_dtype: str | None,
             overwrite: bool) -> None:
    """Compile the model of MLC_DIR (lowbit convert's output) into one library for a target."""
    from lowbit.compiler.compile import CompileArgs, compile_model

    args = CompileArgs(mlc_dir, target, out, overwrite, overrides=overrides,
                       decode_activations=decode_activations, prefill_activations=prefill_activations,
                       kv_cache_dtype=kv_cache_dtype or "")
    if archs:
        args.cuda_archs = tuple(a.strip() for a in archs.split(",") if a.strip())
    click.echo(f"compile: {args.display()}", err=True)
    click.echo(f"wrote {compile_model(args)}")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default="lowbit-package.json",
              show_default=True, help="device and model_list, as MLC's mlc-package-config.json")
@click.option("-o", "--out", type=click.Path(path_type=Path), default="dist", show_default=True,
              help="package folder: lib/, include/, bundle/ (see apps/README.md)")
@click.option("--overwrite", is_flag=True, help="replace OUT if it exists")
@click.option("--verify", "verify_dir", type=click.Path(path_type=Path),
              help="only check an existing package folder (archive, app config, bundled weights agree)")
def package(config_path: Path, out: Path, overwrite: bool, verify_dir: Path | None) -> None:
    """Compile the config's models for a phone into one static archive, with the app config and weights."""
    from lowbit.packager.package import package as run
    from lowbit.packager.package import verify_package

    if verify_dir is not None:
        verify_package(verify_dir)
        click.echo(f"{verify_dir}: archive, app config and bundled weights agree")
        return
    click.echo(f"wrote {run(config_path, out, overwrite)}")


def _generation_options(f):
    """Options shared by ``run`` and ``chat`` (sampling defaults come from mlc-chat-config.json)."""
    opts = [
        click.argument("model_dir", type=click.Path(path_type=Path)),
        click.option("--model-lib", type=click.Path(path_type=Path), required=True, help="compiled library (lowbit compile)"),
        click.option("--max-new-tokens", type=POSITIVE, default=256, show_default=True),
        click.option("--temperature", type=FiniteFloatRange(min=0.0), help="0 = greedy  [default: the folder's]"),
        click.option("--top-p", type=FiniteFloatRange(0.0, 1.0, min_open=True), help="[default: the folder's]"),
        click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 = off"),
        click.option("--repetition-penalty", type=FiniteFloatRange(min=0.0, min_open=True), help="[default: the folder's]"),
        click.option("--seed", type=SEED, help="seed of the sampler (reproducible output)"),
        click.option("--stop", multiple=True, help="stop string (repeatable)"),
        click.option("--system", help="system message"),
        click.option("--context-window", type=POSITIVE, help="cap the context window (less KV-cache memory)"),
        THREADS_OPTION,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _generate_args(**kw):
    from lowbit.runtime.chat import GenerateArgs

    kw["stop"] = tuple(kw["stop"])
    return GenerateArgs(**kw)


@main.command()
@_generation_options
@click.option("--prompt", required=True, help="text to continue (or a user turn with --chat-template)")
@click.option("--chat-template", is_flag=True, help="wrap the prompt in the model's chat template")
def run(**kw) -> None:
    """Generate from a compiled model and its MLC folder, streaming to stdout."""
    from lowbit.runtime.chat import run_prompt

    stats = run_prompt(_generate_args(**kw))
    click.echo(stats.summary(), err=True)


@main.command()
@_generation_options
def chat(**kw) -> None:
    """Chat with a compiled model (/reset, /stats, /exit; Ctrl-C stops a reply)."""
    from lowbit.runtime.chat import chat as run_chat

    run_chat(_generate_args(**kw))


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--model-lib", type=click.Path(path_type=Path), required=True, help="compiled library (lowbit compile)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--model-id", help="the id clients name in requests  [default: MODEL_DIR's name]")
@click.option("--max-batch", type=POSITIVE, default=8, show_default=True, help="sequences generating at once")
@click.option("--max-total-tokens", type=POSITIVE, default=16384, show_default=True,
              help="KV cache pool, in tokens, shared by all sequences")
@click.option("--prefill-chunk", type=POSITIVE, default=256, show_default=True,
              help="prompt tokens per prefill step, interleaved with decode steps")
@click.option("--max-queue", type=POSITIVE, default=64, show_default=True,
              help="requests waiting beyond the batch; more get 503")
@click.option("--api-key", envvar="LOWBIT_API_KEY", help="require Authorization: Bearer KEY (or $LOWBIT_API_KEY)")
@click.option("--context-window", type=POSITIVE, help="cap the context window")
@THREADS_OPTION
def serve(**kw) -> None:
    """Serve a compiled model over an OpenAI-compatible REST API (/v1/chat/completions, …)."""
    from lowbit.serve.server import ServeArgs
    from lowbit.serve.server import serve as run_server

    run_server(ServeArgs(**kw))


@main.command(name="bench")
@click.argument("mlc_dir", type=click.Path(path_type=Path))
@click.option("--model-lib", type=click.Path(path_type=Path), required=True, help="compiled library (lowbit compile)")
@click.option("--prompt-tokens", type=click.IntRange(1, 1 << 20), default=128, show_default=True)
@click.option("--new-tokens", type=click.IntRange(1, 1 << 20), default=128, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the numbers as one JSON object")
@click.option("--profile", is_flag=True, help="also time a decode step per operator kind")
@THREADS_OPTION
def bench_(mlc_dir: Path, model_lib: Path, prompt_tokens: int, new_tokens: int, as_json: bool,
           profile: bool) -> None:
    """Prefill and decode tok/s of a compiled model, weight bytes and GB/s per decode token, and
    the share of the machine's read bandwidth (measured in the same run) that decode reaches."""
    from lowbit.runtime.speed import bench

    speed, ops = bench(mlc_dir, model_lib, prompt_tokens, new_tokens, profile)
    if as_json:
        click.echo(json.dumps({**speed.to_dict(), **({"profile": ops.to_dict()} if ops else {})}))
        return
    click.echo(speed.table())
    if ops:
        click.echo(ops.table())


@main.command(name="list")
@click.argument("what", required=False,
                type=click.Choice(["models", "architectures", "methods", "schemes", "targets"]))
def list_(what: str | None) -> None:
    """What exists: bundled models, model architectures, calibration methods, MLC schemes,
    compile targets."""
    if what in (None, "models"):
        from lowbit.models import BUNDLED

        click.echo("bundled models:")
        for m in BUNDLED.values():
            click.echo(f"  {m.name:16s} {m.description}")
    if what in (None, "architectures"):
        from lowbit.architectures import ARCHITECTURES

        click.echo("model architectures (config.json model_type):")
        for arch in ARCHITECTURES.values():
            click.echo(f"  {arch.model_type:16s} {arch.description}")
    if what in (None, "methods"):
        from lowbit.calib import METHODS

        click.echo("calibration methods:")
        for m in METHODS.values():
            click.echo(f"  {m.name:16s} {m.description}")
    if what in (None, "schemes"):
        from lowbit.compiler.schemes import SCHEMES

        click.echo("MLC schemes (lowbit convert --scheme):")
        for name, scheme in SCHEMES.items():
            edge = scheme.edge
            head = "the same" if edge is scheme else f"{edge.bits_per_weight():g} bits/weight"
            click.echo(f"  {name:21s} {scheme.bits_per_weight():g} bits/weight (linears), embedding/lm_head {head}")
    if what in (None, "targets"):
        from lowbit.targets.presets import PRESETS

        click.echo("compile targets (lowbit compile --target):")
        for name, preset in PRESETS.items():
            missing = preset.missing_tools()
            status = "buildable here" if not missing else "needs " + "; ".join(missing)
            click.echo(f"  {name:12s} {preset.summary} [{status}]")
