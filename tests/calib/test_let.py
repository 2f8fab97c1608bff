"""LET (OmniQuant's learnable equivalent transformation) and SmoothQuant-style scaling on tiny
random Llama (GQA 4:2, RoPE) and Qwen2 (q/k/v biases) models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blockwise_helpers import make_ctx, random_ids

from lowbit.calib import let, omniquant
from lowbit.calib.blocks import (
    BlockData,
    act_quant,
    capture_block_inputs,
    decoder_layers,
    forward_all,
    linear_input_absmax,
)
from lowbit.calib.omniquant import OmniBlock
from lowbit.calib.smoothquant import run_smoothquant
from lowbit.fused import quantized_linear_names
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, quantize


def random_scales(block: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    attn = block.self_attn
    sizes = {"qkv": attn.q_proj.in_features, "fc1": block.mlp.up_proj.in_features,
             "out": attn.v_proj.out_features, "down": block.mlp.down_proj.in_features}
    return {k: torch.exp(torch.randn(n, generator=g)) for k, n in sizes.items()}  # 0.05 … 20


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_folding_leaves_the_model_unchanged(family, tiny_llama_dir, tiny_qwen2_dir):
    model = load_torch_model(tiny_llama_dir if family == "llama" else tiny_qwen2_dir)
    ids = random_ids(2, 32)
    with torch.no_grad():
        before = model(ids).logits
        for i, block in enumerate(decoder_layers(model)):
            let.fold_(block, random_scales(block, seed=i))
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # and the fold did change the weights (GQA: o_proj's columns repeat v's scales per group)
    block = decoder_layers(model)[0]
    s = random_scales(block)["out"]
    assert block.self_attn.o_proj.in_features == 2 * s.numel()


def test_o_channel_map_follows_grouped_query_attention(tiny_llama_dir):
    block = decoder_layers(load_torch_model(tiny_llama_dir))[0]  # 4 query heads, 2 kv, hd 24
    idx = let.o_channel_to_v(block)
    want = np.concatenate([np.arange(24) + 24 * (h // 2) for h in range(4)])
    np.testing.assert_array_equal(idx.numpy(), want)


def test_initial_scales_follow_smoothquant(tiny_llama_dir):
    model = load_torch_model(tiny_llama_dir)
    x, kwargs = capture_block_inputs(model, random_ids(), torch.device("cpu"))
    block = decoder_layers(model)[0]
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    seen: dict[str, list[np.ndarray]] = {}
    mods = dict(block.named_modules())
    hooks = [mods[n].register_forward_pre_hook(
        lambda m, a, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]).numpy()))
        for n in names]
    with torch.no_grad():
        block(x, **kwargs)
    for h in hooks:
        h.remove()
    absmax = linear_input_absmax(block, x, kwargs, names)
    for n in names:
        np.testing.assert_allclose(absmax[n].numpy(), np.abs(np.concatenate(seen[n])).max(0))
    alpha = 0.75
    scales = let.init_scales(block, absmax, alpha)

    def smooth(act, w):
        return np.maximum(np.maximum(act, 1e-5) ** alpha / np.maximum(w, 1e-5) ** (1 - alpha),
                          1e-5)

    w = lambda n: mods[n].weight.detach().numpy()  # noqa: E731
    wqkv = np.abs(np.concatenate([w(f"self_attn.{p}_proj") for p in "qkv"])).max(0)
    np.testing.assert_allclose(scales["qkv"].numpy(),
                               smooth(absmax["self_attn.q_proj"].numpy(), wqkv), rtol=1e-5)
    wfc = np.abs(np.concatenate([w("mlp.gate_proj"), w("mlp.up_proj")])).max(0)
    np.testing.assert_allclose(scales["fc1"].numpy(),
                               smooth(absmax["mlp.up_proj"].numpy(), wfc), rtol=1e-5)
    # v channel (kv head k, dim j) takes the max over the query heads 2k, 2k+1 reading it
    act_o = absmax["self_attn.o_proj"].numpy().reshape(2, 2, 24).max(1).reshape(-1)
    w_o = np.abs(w("self_attn.o_proj")).max(0).reshape(2, 2, 24).max(1).reshape(-1)
    np.testing.assert_allclose(scales["out"].numpy(), smooth(act_o, w_o), rtol=1e-5)
    w_down = np.abs(w("mlp.down_proj")).max(0)
    np.testing.assert_allclose(scales["down"].numpy(),
                               smooth(absmax["mlp.down_proj"].numpy(), w_down), rtol=1e-5)
    assert "down" not in let.init_scales(block, absmax, alpha, down=False)


def _data(model_dir):
    model = load_torch_model(model_dir)
    x, kwargs = capture_block_inputs(model, random_ids(), torch.device("cpu"))
    block = decoder_layers(model)[0]
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    fp_out = forward_all(block, x, kwargs)
    return BlockData(0, block, {n: n for n in names}, kwargs, x, fp_out, x.clone())


@pytest.mark.parametrize("act_bits", [None, 4])
def test_one_let_lwc_step_lowers_the_block_loss(tiny_llama_dir, act_bits):
    data = _data(tiny_llama_dir)
    data.block.requires_grad_(False)
    names = list(data.linears)
    scales = let.init_scales(data.block, linear_input_absmax(data.block, data.fp_in, data.kwargs,
                                                             names), 0.5)
    omni = OmniBlock(data.block, names, QuantSpec(4, -1), scales, act_bits)
    opt = torch.optim.AdamW([{"params": omni.lwc_parameters(), "lr": 1e-2},
                             {"params": omni.let_parameters(), "lr": 5e-3}], weight_decay=0.0)
    x, target = data.quant_in[:1], data.fp_out[:1]
    before = omni.loss(x, [target], data.kwargs)
    before.backward()
    assert all(s.grad.abs().sum() > 0 for s in omni.let_parameters())
    opt.step()
    with torch.no_grad():
        after = omni.loss(x, [target], data.kwargs)
    assert after < before


def test_export_is_what_training_saw(tiny_qwen2_dir):
    """The folded block with the exported weights computes the trained forward pass."""
    data = _data(tiny_qwen2_dir)
    data.block.requires_grad_(False)
    names = list(data.linears)
    scales = random_scales(data.block)
    omni = OmniBlock(data.block, names, QuantSpec(3, 32), scales, act_bits=6)
    with torch.no_grad():
        trained = omni.forward(data.quant_in, data.kwargs)
    quantized = omni.export()
    mods = dict(data.block.named_modules())
    with torch.no_grad():
        for n, q in quantized.items():
            mods[n].weight.copy_(q.dequantize())
        with act_quant(data.block, names, 6):
            folded = forward_all(data.block, data.quant_in, data.kwargs)
    torch.testing.assert_close(folded, trained, rtol=1e-4, atol=1e-4)


def test_smoothquant_beats_rtn_on_activation_outliers(tiny_llama_dir):
    """With outlier input channels, migrating them into the weights lowers the W8A4 error."""
    def model_with_outliers():
        model = load_torch_model(tiny_llama_dir)
        with torch.no_grad():
            for block in decoder_layers(model):
                for norm in (block.input_layernorm, block.post_attention_layernorm):
                    norm.weight[[3, 40, 77]] *= 30.0
        return model

    ids = random_ids(2, 32)
    ref = model_with_outliers()
    with torch.no_grad():
        want = ref(ids).logits
    spec = QuantSpec(8, -1)

    def error(model) -> float:
        names = quantized_linear_names(model)
        with torch.no_grad(), act_quant(model, names, 4):
            return (model(ids).logits - want).pow(2).mean().item()

    rtn = model_with_outliers()
    mods = dict(rtn.named_modules())
    with torch.no_grad():
        for n in quantized_linear_names(rtn):
            mods[n].weight.copy_(quantize(mods[n].weight, spec).dequantize())
    smooth = model_with_outliers()
    defaults = {"small": {"alpha": 0.5, "down_scale": 1}}
    ctx = make_ctx(tiny_llama_dir, spec, "smoothquant", defaults, nsamples=2, seqlen=32)
    ctx.act_bits = 4
    run_smoothquant(smooth, quantized_linear_names(smooth), ctx, random_ids())
    assert error(smooth) < 0.5 * error(rtn)


def test_omniquant_let_resume_restores_folded_norms(tiny_llama_dir, isolated_cache, monkeypatch):
    def run(**settings):
        model = load_torch_model(tiny_llama_dir)
        ctx = make_ctx(tiny_llama_dir, QuantSpec(4, -1), "omniquant", omniquant.defaults(4, 4),
                       nsamples=2, seqlen=32, epochs=1, let=1, **settings)
        ctx.act_bits = 4
        out = omniquant.run_omniquant(model, quantized_linear_names(model), ctx, random_ids())
        return model, out

    full_model, full = run()
    real = omniquant.train_block

    def crash_at_block_1(data, *a, **kw):
        if data.index == 1:
            raise KeyboardInterrupt
        return real(data, *a, **kw)

    monkeypatch.setattr(omniquant, "train_block", crash_at_block_1)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(omniquant, "train_block", real)
    model, resumed = run(resume=1)
    for name, q in full.items():
        assert torch.equal(q.codes, resumed[name].codes), name
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_let_checkpoint_converts_with_no_new_tensor(tiny_qwen2_dir, tmp_path, isolated_cache):
    """A weight-only LET checkpoint is an ordinary fused folder: MLC's q0f32 reads it back to
    the same logits, and the asymmetric scheme keeps its codes bit for bit."""
    from lowbit.compiler.convert import ConvertArgs, convert
    from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
    from lowbit.fused import load_fused, make_qconfig, save_fused

    model = load_torch_model(tiny_qwen2_dir)
    spec = QuantSpec(4, 32)
    ctx = make_ctx(tiny_qwen2_dir, spec, "omniquant", omniquant.defaults(4), nsamples=2,
                   seqlen=32, epochs=1, let=1)
    layers = quantized_linear_names(model)
    norm_before = model.model.layers[0].input_layernorm.weight.clone()
    quantized = omniquant.run_omniquant(model, layers, ctx, random_ids())
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norm_before)
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    save_fused(fused_dir, model, quantized, make_qconfig("omniquant", spec, layers), tiny_qwen2_dir)
    fused = load_fused(fused_dir)
    q0 = tmp_path / "q0"
    convert(ConvertArgs(str(fused_dir), "q0f32", q0, progress=False))
    x = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(load_mlc_model(q0)(x).logits, fused.model(x).logits,
                                   rtol=0, atol=0)
    asym = tmp_path / "asym"
    convert(ConvertArgs(str(fused_dir), "w4a16g32asym", asym, progress=False))
    state = read_mlc(asym).state_dict
    for name in quantized:
        assert torch.equal(state[f"{name}.weight"], fused.model.state_dict()[f"{name}.weight"])
