"""``lowbit compile``: one shared library with metadata; a mismatched MLC folder is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowbit.cli import main
from lowbit.compiler.compile import CompileArgs, compile_model
from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.compiler.mlc_reader import load_mlc_model
from lowbit.errors import LowbitError
from lowbit.runtime.engine import Engine


@pytest.fixture(scope="module")
def compiled(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    mlc = root / "mlc"
    convert(ConvertArgs(str(tiny_llama_dir), "w4a16g128asym", mlc, progress=False))
    result = CliRunner().invoke(main, ["compile", str(mlc), "--target", "llvm", "-o", str(root / "lib.so")])
    assert result.exit_code == 0, result.output
    return root, mlc, root / "lib.so"


def test_library_runs_and_carries_metadata(compiled):
    root, mlc, lib = compiled
    engine = Engine(mlc, lib, context_window=64)
    meta = json.loads(str(engine.vm["_metadata"]()))
    assert (meta["model_type"], meta["quantization"]) == ("llama", "w4a16g128asym")
    assert meta["config"]["hidden_size"] == 96
    assert any(p["name"].endswith("qkv_proj.q_zero") for p in meta["params"])
    ids = [5, 17, 300, 2, 9]
    with torch.no_grad():
        want = load_mlc_model(mlc)(torch.tensor([ids])).logits[0, -1].numpy()
    engine.add_sequence(0)
    np.testing.assert_allclose(engine.prefill(0, ids), want, atol=1e-4)


def test_compile_prints_no_tvm_warning(tiny_llama_dir, tmp_path, capfd):
    """TVM's "Fast mode segfaults" warning (a take in fast mode) no longer comes with every build."""
    mlc = convert(ConvertArgs(str(tiny_llama_dir), "q0f32", tmp_path / "mlc", progress=False)).out
    compile_model(CompileArgs(mlc, "llvm", tmp_path / "lib.so"), progress=False)
    err = capfd.readouterr().err
    assert "Warning" not in err and "segfault" not in err, err


def test_mismatched_mlc_folder_is_refused(compiled, tmp_path):
    root, mlc, lib = compiled
    other = tmp_path / "other"
    shutil.copytree(mlc, other)
    chat = json.loads((other / "mlc-chat-config.json").read_text())
    chat["quantization"] = "q4f16_1"
    (other / "mlc-chat-config.json").write_text(json.dumps(chat))
    with pytest.raises(LowbitError, match="is for quantization 'w4a16g128asym'"):
        Engine(other, lib)


def test_existing_output_and_bad_inputs(compiled, tmp_path):
    root, mlc, lib = compiled
    with pytest.raises(LowbitError, match="already exists"):
        compile_model(CompileArgs(mlc, "llvm", lib), progress=False)
    with pytest.raises(LowbitError, match="unknown target"):
        compile_model(CompileArgs(mlc, "metal:m9", tmp_path / "x.so"), progress=False)
    with pytest.raises(LowbitError, match="not an MLC model folder"):
        compile_model(CompileArgs(tmp_path, "llvm", tmp_path / "x.so"), progress=False)
    assert not (tmp_path / "x.so").exists()


def test_pipeline_marks_every_primfunc_noalias():
    """TVM's LLVM codegen emits every function with the noalias flag of the last one declared;
    the pipeline makes the flag true for all, so one TVMScript kernel cannot turn it off."""
    import tvm
    from tvm.script import tirx as T

    from lowbit.targets.cpu import mark_all_noalias

    @T.prim_func(private=True)
    def plain(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32")):
        for i in range(4):
            b[i] = a[i]

    assert not (plain.attrs and plain.attrs.get("tirx.noalias", False))
    mod = mark_all_noalias(tvm.IRModule({"plain": plain}))
    assert bool(mod["plain"].attrs["tirx.noalias"])
