"""The CPU pipeline's rules outside the fused matmuls: a one-token RMS norm runs once, not once
per element, and still equals NumPy; many-token norms stay parallel over tokens."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend import nn

from lowbit.targets.cpu import pipeline, schedule_rules

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
