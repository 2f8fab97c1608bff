"""The CPU pipeline's rules outside the fused matmuls: a one-token RMS norm runs once, not once
per element, and still equals NumPy; many-token norms stay parallel over tokens; a reshape of a
reshape is one reshape, a view that no kernel copies."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend import nn

from lowbit.targets.cpu import merge_reshapes, pipeline, schedule_rules

HIDDEN = 576


class AddNorm(nn.Module):
    def __init__(self):
        self.norm = nn.RMSNorm(HIDDEN, -1, 1e-5, bias=False)

    def forward(self, x: nn.Tensor, r: nn.Tensor):
        return self.norm(x + r)


def _norm_func(rows: int | str) -> tvm.tirx.PrimFunc:
    spec = {"forward": {"x": nn.spec.Tensor([1, rows, HIDDEN], "float32"),
                        "r": nn.spec.Tensor([1, rows, HIDDEN], "float32")}}
    mod, _ = AddNorm().export_tvm(spec=spec)
    target = tvm.target.Target("llvm")
    with target:
        mod = tvm.transform.Sequential(relax.backend.cpu_generic.pipeline.legalize_passes(target))(mod)
    with target:
        mod = schedule_rules()(mod)
    (name,) = [gv.name_hint for gv in mod.functions if "rms_norm" in gv.name_hint]
    return mod[name]


@pytest.mark.parametrize("rows,parallel", [(1, False), ("n", True)])
def test_norm_schedule(rows, parallel):
    script = _norm_func(rows).script()
    assert ("T.parallel" in script) == parallel


def test_one_token_norm_equals_numpy():
    mod, _ = AddNorm().export_tvm(spec={"forward": {"x": nn.spec.Tensor([1, 1, HIDDEN], "float32"),
                                                    "r": nn.spec.Tensor([1, 1, HIDDEN], "float32")}})
    target = tvm.target.Target("llvm")
    exe = relax.build(mod, target, relax_pipeline=pipeline(target))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    rng = np.random.default_rng(0)
    x, r = (rng.standard_normal((1, 1, HIDDEN), dtype=np.float32) for _ in range(2))
    w = np.ones(HIDDEN, np.float32)
    out = vm["forward"](tvm.runtime.tensor(x), tvm.runtime.tensor(r), tvm.runtime.tensor(w)).numpy()
    h = (x + r).astype(np.float64)
    want = h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def _doubled(n: int) -> tvm.tirx.PrimFunc:
    """An opaque kernel (as the GEMVs and the KV cache are): ``y = 2·x`` over [n]."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def double(x_handle: T.handle, y_handle: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})
        x = T.match_buffer(x_handle, (n,), "float32")
        y = T.match_buffer(y_handle, (n,), "float32")
        with T.sblock("root"):
            for i in T.serial(n):
                y[i] = x[i] * T.float32(2)

    return double


class HeadsAndBack(nn.Module):
    """The KV cache's pattern between opaque kernels: q/k/v split into heads and flattened, the
    output back."""

    def forward(self, x: nn.Tensor):
        def double(t: nn.Tensor) -> nn.Tensor:
            return nn.op.tensor_ir_op(_doubled(960), "double", [t], nn.Tensor.placeholder((960,), "float32"))

        qkv = nn.op.reshape(double(nn.op.reshape(x, (960,))), (1, 1, 15, 64))
        heads = double(nn.op.reshape(nn.op.reshape(qkv, (1, 15, 64)), (960,)))
        return nn.op.reshape(nn.op.reshape(heads, (1, 15, 64)), (1, 1, 960))


def test_reshape_pairs_become_one_view():
    mod, _ = HeadsAndBack().export_tvm(spec={"forward": {"x": nn.spec.Tensor([1, 1, 960], "float32")}})
    assert merge_reshapes(mod)["forward"].script().count("R.reshape(") == 3  # of six
    target = tvm.target.Target("llvm")
    with target:
        lowered = pipeline(target)(mod)
    script = lowered["forward"].script()
    copies = re.findall(r"^ +(fused_reshape\w*|reshape\d*)\(", script, re.M)
    assert script.count('"vm.builtin.reshape"') == 2 and len(copies) == 1  # a view each, the output copied
    exe = relax.build(mod, target, relax_pipeline=pipeline(target))
    x = np.random.default_rng(1).standard_normal((1, 1, 960), dtype=np.float32)
    np.testing.assert_array_equal(relax.VirtualMachine(exe, tvm.cpu())["forward"](tvm.runtime.tensor(x)).numpy(), 4 * x)
