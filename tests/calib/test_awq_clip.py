"""AWQ-style clip search: never a larger output error than plain min/max rounding."""

from __future__ import annotations

import pytest
import torch
from blockwise_helpers import make_ctx, random_ids

from lowbit.calib import awq_clip
from lowbit.calib.awq_clip import clip_search, run_awq_clip
from lowbit.calib.blocks import capture_block_inputs, decoder_layers
from lowbit.fused import quantized_linear_names
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, fake_quantize


def _out_err(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    """Mean squared output error of the linear on inputs x [T, K], computed directly."""
    return ((x.double() @ (q - w).double().T) ** 2).mean().item()


@pytest.mark.parametrize("spec", [QuantSpec(2, 64), QuantSpec(3, 32), QuantSpec(4, 128, True),
                                  QuantSpec(3, -1)], ids=lambda s: s.name)
def test_clip_search_never_raises_output_error(spec):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 96, generator=g) * torch.rand(96, generator=g) * 3
    w = torch.randn(48, 96, generator=g)
    w[:, ::17] *= 6  # outliers: clipping helps
    gram = (x.double().T @ x.double()) / len(x)
    q = clip_search(w, gram, spec).dequantize()
    rtn = fake_quantize(w, spec)
    assert _out_err(x, w, q) <= _out_err(x, w, rtn) * (1 + 1e-9)
    if spec.bits <= 3:  # and the search does clip
        assert _out_err(x, w, q) < 0.99 * _out_err(x, w, rtn)


def test_awq_clip_on_tiny_model_per_linear(tiny_llama_dir, isolated_cache):
    spec = QuantSpec(2, 64)
    model = load_torch_model(tiny_llama_dir)
    fp_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = random_ids()
    # the FP inputs of every linear in the first block
    inputs: dict[str, torch.Tensor] = {}
    block = decoder_layers(model)[0]
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.__setitem__(n, a[0]))
             for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    x, (kwargs, *_) = capture_block_inputs(model, ids, torch.device("cpu"))
    with torch.no_grad():
        block(x, **kwargs)
    for h in hooks:
        h.remove()
    ctx = make_ctx(tiny_llama_dir, spec, "awq-clip", {"small": awq_clip.DEFAULTS},
                   nsamples=2, seqlen=32)
    out = run_awq_clip(model, quantized_linear_names(model), ctx, ids)
    for local, xin in inputs.items():
        name = f"model.layers.0.{local}"
        w = fp_weights[f"{name}.weight"]
        xs = xin.reshape(-1, xin.shape[-1])
        rtn = _out_err(xs, w, fake_quantize(w, spec))
        assert _out_err(xs, w, out[name].dequantize()) <= rtn * (1 + 1e-9)
        if local.endswith(("q_proj", "k_proj")):  # not clipped, as in llm-awq
            assert torch.equal(out[name].dequantize(), fake_quantize(w, spec))


def test_linear_input_grams_match_direct_inputs(tiny_block):
    from lowbit.calib.blocks import linear_input_grams

    _model, block, x, kwargs = tiny_block
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(block.named_modules())
    hooks = [mods[n].register_forward_pre_hook(lambda _m, a, n=n: inputs[n].append(a[0]))
             for n in names]
    with torch.no_grad():
        for i in range(len(x)):  # one window at a time: a different batching than the helper's
            block(x[i : i + 1], **kwargs)
    for h in hooks:
        h.remove()
    grams = linear_input_grams(block, x, kwargs, names)
    for n in names:
        a = torch.cat(inputs[n]).reshape(-1, inputs[n][0].shape[-1]).double()
        torch.testing.assert_close(grams[n], a.T @ a / len(a), rtol=1e-5, atol=1e-6)
