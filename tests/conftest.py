"""Shared fixtures: tiny random models (unit tests) and the bundled model (end-to-end tests)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_models import (
    save_tiny,
    tiny_gemma2_config,
    tiny_llama_config,
    tiny_mistral_config,
    tiny_phi3_config,
    tiny_qwen2_config,
    tiny_qwen3_config,
)


@pytest.fixture(scope="session", autouse=True)
def offline():
    """lowbit reads local files only: a connection off the loopback interface from the test
    process, where every CLI command and API call of the suite runs, fails the call and the run
    (``serve`` binds and its clients connect on loopback). The documented PyPI downloads of data
    wheels run pip in its own process."""
    import ipaddress
    import socket

    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                attempts.append(address)
                raise OSError(f"network blocked by the test suite: {address}")
        return real_connect(self, address)

    socket.socket.connect = connect
    yield
    socket.socket.connect = real_connect
    assert attempts == [], f"connections off the loopback interface: {attempts}"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_llama"), tiny_llama_config())


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_qwen2"), tiny_qwen2_config())


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_qwen3"), tiny_qwen3_config())


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_mistral"), tiny_mistral_config())


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_gemma2"), tiny_gemma2_config())


@pytest.fixture(scope="session")
def tiny_phi3_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_phi3"), tiny_phi3_config())


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The bundled SmolLM2-135M as a cached HF folder (built on first use, ~40 s)."""
    from lowbit.models import resolve_model

    return resolve_model("smollm2-135m")


@dataclass(frozen=True)
class BundledBuild:
    mlc_dir: Path
    lib: Path


@pytest.fixture(scope="session")
def bundled_build(bundled_dir, tmp_path_factory) -> Callable[[str], BundledBuild]:
    """scheme → the bundled model as an MLC folder of that scheme and its CPU library, each built
    once per session (~20 s)."""
    from lowbit.compiler.compile import CompileArgs, compile_model
    from lowbit.compiler.convert import ConvertArgs, convert

    built: dict[str, BundledBuild] = {}

    def get(scheme: str) -> BundledBuild:
        if scheme not in built:
            root = tmp_path_factory.mktemp(f"bundled-{scheme}")
            mlc = convert(ConvertArgs(str(bundled_dir), scheme, root / "mlc", progress=False)).out
            built[scheme] = BundledBuild(mlc, compile_model(CompileArgs(mlc, "llvm", root / f"{scheme}.so"), progress=False))
        return built[scheme]

    return get


@pytest.fixture(scope="session")
def bundled_w4(bundled_build) -> BundledBuild:
    """The bundled model as a w4a16g128asym MLC folder and its CPU library."""
    return bundled_build("w4a16g128asym")


# -- a tiny random Llama with the bundled model's tokenizer: HF folder → q0f32 MLC folder → library
@dataclass(frozen=True)
class TinyChat:
    hf_dir: Path
    mlc_dir: Path
    lib: Path


def _save_tiny_chat_model(path: Path) -> Path:
    """Two layers, GQA 4:2, head_dim 24, untied lm_head, the bundled model's 49152-token vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=49152, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # logits of std ~5 instead of ~0.2: greedy margins far above fp32 noise
        model.lm_head.weight.mul_(25.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory, bundled_dir) -> TinyChat:
    from lowbit.compiler.compile import CompileArgs, compile_model
    from lowbit.compiler.convert import ConvertArgs, convert

    root = tmp_path_factory.mktemp("tiny_chat")
    hf = _save_tiny_chat_model(root / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(bundled_dir / name, hf / name)
    mlc = convert(ConvertArgs(str(hf), "q0f32", root / "mlc", progress=False)).out
    lib = compile_model(CompileArgs(mlc, "llvm", root / "tiny.so"), progress=False)
    return TinyChat(hf, mlc, lib)


@pytest.fixture(scope="session")
def tiny_chat_library(tiny_chat, tmp_path_factory):
    """(target, suffix) → the tiny chat model compiled by that preset into a library of that
    suffix, alone in its folder with what ``lowbit compile`` writes beside it; built once per
    session (llvm's ``.so`` is ``tiny_chat.lib``)."""
    from lowbit.compiler.compile import CompileArgs, compile_model

    root = tmp_path_factory.mktemp("tiny_chat_libs")
    made: dict[tuple[str, str], Path] = {("llvm", tiny_chat.lib.suffix): tiny_chat.lib}

    def get(target: str, suffix: str) -> Path:
        if (target, suffix) not in made:
            out = root / f"{target}{suffix.replace('.', '-')}" / f"tiny{suffix}"
            made[target, suffix] = compile_model(CompileArgs(tiny_chat.mlc_dir, target, out), progress=False)
        return made[target, suffix]

    return get


# -- a one-layer model with the bundled model's shapes, per MLC scheme (targets, packager)
@pytest.fixture(scope="session")
def tiny_mlc(tmp_path_factory):
    """scheme → MLC folder of a one-layer model with the bundled model's shapes (hidden 576, 9/3
    heads of 64, FFN 1536, vocabulary 49152: kernel limits such as GPU shared memory depend on
    them), random weights, converted once per scheme."""
    from lowbit.compiler.convert import ConvertArgs, convert

    root = tmp_path_factory.mktemp("tiny_mlc")
    hf = save_tiny(root / "hf", tiny_llama_config(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=256))
    made: dict[str, Path] = {}

    def get(scheme: str) -> Path:
        if scheme not in made:
            made[scheme] = convert(ConvertArgs(str(hf), scheme, root / scheme, progress=False)).out
        return made[scheme]

    return get
