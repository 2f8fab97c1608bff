"""The ``vulkan`` target end to end: the model's WGSL kernels run on lowbit's WebGPU runtime
(``runtime/wgpu`` over wgpu-native; here on Mesa's lavapipe, a CPU Vulkan driver) and give the
llvm build's logits within fp16 tolerance.

Teacher-forced: the llvm build (fp32) generates greedily; the vulkan build (fp16 compute and KV
cache) is fed the same tokens and its logits are compared at every step. Its top-1 token must
agree wherever the llvm build's top-2 gap exceeds the tolerance (below it fp16 rounding may
swap them).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from required_tools import require

from lowbit.compiler.compile import CompileArgs, compile_model
from lowbit.runtime.engine import Engine
from lowbit.runtime.tokenizer import Tokenizer

README_PROMPT = "The capital of France is"
ELF_AARCH64 = 183
LOGIT_TOLERANCE = 0.01  # of the step's largest |logit|
PPL_SEQLEN, PPL_WINDOWS = 64, 4


def teacher_forced(mlc, llvm_lib, vulkan_lib, prompt_ids: list[int], steps: int):
    """Logits [steps, vocab] of both builds: the prompt's last position, then one per greedy token
    of the llvm build."""
    runs = {}
    tokens: list[int] = []
    for name, lib in (("llvm", llvm_lib), ("vulkan", vulkan_lib)):
        engine = Engine(mlc, lib, check_md5=False)
        seq = engine.add_sequence()
        logits = [engine.prefill(seq, prompt_ids)]
        for i in range(steps - 1):
            if name == "llvm":
                tokens.append(int(np.argmax(logits[-1])))
            logits.append(engine.decode(seq, tokens[i]))
        runs[name] = np.stack(logits).astype(np.float64)
        if name == "vulkan":
            assert engine.device.dlpack_device_type() == 15  # kDLWebGPU
    return runs["llvm"], runs["vulkan"]


def assert_close(reference: np.ndarray, got: np.ndarray) -> None:
    for step, (ref, out) in enumerate(zip(reference, got, strict=True)):
        tol = LOGIT_TOLERANCE * np.abs(ref).max()
        assert np.abs(out - ref).max() <= tol, (step, np.abs(out - ref).max(), tol)
        top2 = np.sort(ref)[-2:]
        if top2[1] - top2[0] > tol:
            assert np.argmax(out) == np.argmax(ref), step


@pytest.fixture(scope="module")
def tiny_builds(tiny_mlc, tmp_path_factory):
    """scheme → (MLC folder, llvm library, vulkan library) of the one-layer model, built once."""
    built = {}

    def get(scheme: str):
        if scheme not in built:
            mlc, root = tiny_mlc(scheme), tmp_path_factory.mktemp(f"vulkan-{scheme}")
            built[scheme] = (mlc, *(compile_model(CompileArgs(mlc, t, root / f"{t}.so"), progress=False)
                                    for t in ("llvm", "vulkan")))
        return built[scheme]

    return get


def test_tiny_model_matches_llvm(tiny_builds, webgpu_runtime):
    """The fast check (the bundled model's, below, covers w4a16g128asym too)."""
    mlc, llvm, vulkan = tiny_builds("q4f16_1")
    reference, got = teacher_forced(mlc, llvm, vulkan, list(range(1, 40)), steps=6)
    assert_close(reference, got)


def test_aarch64_host_library_holds_the_wgsl(tiny_mlc, tmp_path):
    """``vulkan-aarch64``: the same WGSL kernels with aarch64 host code (cross-linked; it cannot
    run on this x86-64 machine)."""
    from lowbit.runtime.webgpu_runtime import WEBGPU_MODULE_KIND

    require("aarch64-linux-gnu-g++", "cross-links aarch64 libraries")
    lib = compile_model(CompileArgs(tiny_mlc("q4f16_1"), "vulkan-aarch64", tmp_path / "model.so"), progress=False)
    data = lib.read_bytes()
    assert data[:4] == b"\x7fELF" and struct.unpack("<H", data[18:20])[0] == ELF_AARCH64
    assert WEBGPU_MODULE_KIND in data and b"enable f16;" in data


def test_no_adapter_is_one_line(tiny_builds, webgpu_runtime):
    """Without a Vulkan driver (none found here) run says so in one line, naming the driver."""
    mlc, _, vulkan = tiny_builds("q4f16_1")
    env = {**os.environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json"}
    proc = subprocess.run([str(Path(sys.executable).parent / "lowbit"), "run", str(mlc), "--model-lib", str(vulkan),
                           "--prompt", "hi", "--max-new-tokens", "1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "no WebGPU adapter on this machine: install a Vulkan driver" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["w4a16g128asym", "q4f16_1"])
def test_bundled_model_matches_llvm_and_pytorch(scheme, bundled_build, tmp_path, webgpu_runtime):
    """The bundled SmolLM2-135M: teacher-forced on 32 greedy tokens of the llvm build for the
    README prompt; test-split perplexity on 4 windows of 64 tokens (lavapipe prefills ~10 tokens/s)
    within 0.5 % of PyTorch's on the same weights (fake-quant, fp32)."""
    from lowbit.compiler.mlc_reader import load_mlc_model
    from lowbit.corpus import eval_windows, split_tokens
    from lowbit.evaluate.perplexity import perplexity, torch_logits_fn
    from lowbit.evaluate.run import evaluate_compiled_perplexity
    from lowbit.models import load_tokenizer

    build = bundled_build(scheme)
    mlc, llvm = build.mlc_dir, build.lib
    vulkan = compile_model(CompileArgs(mlc, "vulkan", tmp_path / "vulkan.so"), progress=False)
    prompt = Tokenizer(mlc).encode(README_PROMPT)
    reference, got = teacher_forced(mlc, llvm, vulkan, prompt, steps=32)
    assert_close(reference, got)
    compiled = evaluate_compiled_perplexity(mlc, vulkan, "test", PPL_SEQLEN, PPL_WINDOWS, progress=False)
    ids = eval_windows(split_tokens(load_tokenizer(mlc), "test"), PPL_SEQLEN, PPL_WINDOWS)
    fake_quant = perplexity(torch_logits_fn(load_mlc_model(mlc)), ids, 4, progress=False)
    assert compiled["tokens"] == fake_quant.tokens
    print(f"\nVULKAN-PPL {scheme} compiled {compiled['ppl']:.4f} pytorch {fake_quant.ppl:.4f}")
    assert abs(compiled["ppl"] / fake_quant.ppl - 1) < 0.005, (compiled["ppl"], fake_quant.ppl)
