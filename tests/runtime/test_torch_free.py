"""The runtime and the server need neither torch nor the TVM compiler: generate and serve in a venv
that has only ``apache-tvm`` (runtime-only mode), ``tokenizers``, NumPy, jinja2, click, the
server's ASGI stack and lowbit (no deps)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit.cache import cache_dir

REPO = Path(__file__).resolve().parents[2]
RUNTIME_DEPS = ["apache-tvm==0.27.0.post1", "tokenizers", "numpy", "jinja2", "click", "setuptools>=77",
                "fastapi", "uvicorn", "prometheus-client", "llguidance", "httpx"]  # httpx: the test client


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True,
                   stdout=subprocess.DEVNULL)


def _runtime_venv() -> Path:
    """A plain venv with the runtime's dependencies, cached under $LOWBIT_CACHE (built once, ~1.5 min)."""
    key = hashlib.sha256(f"{sys.version}{RUNTIME_DEPS}".encode()).hexdigest()[:12]
    venv = cache_dir() / "venvs" / f"runtime-{key}"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _pip(venv, *RUNTIME_DEPS)
        (venv / ".complete").touch()
    return venv


@pytest.mark.slow
def test_generation_without_torch(tiny_chat, tmp_path):
    from transformers import AutoModelForCausalLM

    from lowbit.runtime.tokenizer import Tokenizer

    venv = _runtime_venv()
    _pip(venv, "--no-deps", "--no-build-isolation", "--force-reinstall", str(REPO))
    python, env = str(venv / "bin" / "python"), dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    env.pop("PYTHONPATH", None)
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert "No module named 'torch'" in probe.stderr

    prompt = "The capital of France is"
    tokenizer = Tokenizer(tiny_chat.mlc_dir)
    ids = tokenizer.encode(prompt)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat.hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()

    result = subprocess.run(
        [str(venv / "bin" / "lowbit"), "run", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
         "--prompt", prompt, "--max-new-tokens", "12", "--temperature", "0"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == tokenizer.decode(ref) + "\n"

    def run_python(code: str) -> str:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return out.stdout

    # the server's app, in-process: a completion equal to `lowbit run`'s, and still no torch
    assert run_python(
        "import sys; from fastapi.testclient import TestClient; "
        "from lowbit.serve.app import ServeArgs, create_app; "
        f"app = create_app(ServeArgs({str(tiny_chat.mlc_dir)!r}, {str(tiny_chat.lib)!r}))\n"
        "with TestClient(app) as c:\n"
        "    import time\n"
        "    while c.get('/health').status_code != 200: time.sleep(0.1)\n"
        f"    r = c.post('/v1/completions', json={{'prompt': {prompt!r}, 'max_tokens': 12, 'temperature': 0}})\n"
        "    print(r.json()['choices'][0]['text'])\n"
        "    r = c.post('/v1/completions', json={'prompt': 'x', 'max_tokens': 40, 'logprobs': 1, "
        "'response_format': {'type': 'json_schema', 'json_schema': {'name': 'n', 'schema': {'enum': [1, 2]}}}})\n"
        "    assert r.json()['choices'][0]['text'] in ('1', '2') and r.json()['choices'][0]['logprobs'], r.text\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    ) == result.stdout

    # the same process shape, asserting what was (not) loaded
    assert run_python(
        "import sys; from lowbit.runtime.engine import Engine; "
        f"e = Engine({str(tiny_chat.mlc_dir)!r}, {str(tiny_chat.lib)!r}); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
        "import tvm\ntry:\n    from tvm import relax\nexcept Exception:\n    print('runtime-only')"
    ).strip() == "runtime-only"
