"""LET (OmniQuant's learnable equivalent transformation) and SmoothQuant-style scaling on tiny
random Llama (GQA 4:2, RoPE) and Qwen2 (q/k/v biases) models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blockwise_helpers import make_ctx, random_ids

from lowbit.architectures import ARCHITECTURES
from lowbit.biases import add_bias
from lowbit.calib import let, omniquant
from lowbit.calib.blocks import (
    BlockData,
    act_quant,
    block_layout,
    capture_block_inputs,
    decoder_layers,
    forward_all,
    linear_input_range,
)
from lowbit.calib.omniquant import OmniBlock
from lowbit.calib.smoothquant import run_smoothquant
from lowbit.fused import quantized_linear_names
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, quantize

LAYOUT = ARCHITECTURES["llama"].layout  # Qwen2's record shares it


def _sizes(block: torch.nn.Module) -> dict[str, int]:
    attn = block.self_attn
    return {"qkv": attn.q_proj.in_features, "fc1": block.mlp.up_proj.in_features,
            "out": attn.v_proj.out_features, "down": block.mlp.down_proj.in_features}


def random_scales(block: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.exp(torch.randn(n, generator=g)) for k, n in _sizes(block).items()}  # 0.05 … 20


def random_shifts(block: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    return {k: torch.randn(n, generator=g) for k, n in _sizes(block).items() if k != "down"}


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_folding_leaves_the_model_unchanged(family, shift, request):
    model = load_torch_model(request.getfixturevalue(f"tiny_{family}_dir"))
    ids = random_ids(2, 32)
    had_bias = {n for n, p in decoder_layers(model)[0].named_parameters() if n.endswith(".bias") and p.any()}
    with torch.no_grad():
        before = model(ids).logits
        for i, block in enumerate(decoder_layers(model)):
            let.fold_(block, LAYOUT, random_scales(block, seed=i),
                      random_shifts(block, seed=i) if shift else None)
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    block = decoder_layers(model)[0]
    # a shift becomes biases on both norms and on every linear but down_proj
    biased = {n for n, p in block.named_parameters() if n.endswith(".bias") and p.any()}
    want = {f"{n}.bias" for n in ("input_layernorm", "post_attention_layernorm", "mlp.gate_proj",
                                  "mlp.up_proj", *(f"self_attn.{p}_proj" for p in "qkvo"))}
    assert biased == (want if shift else had_bias)  # without a shift, only Qwen2's own q/k/v biases
    # GQA: o_proj's columns repeat v's scales per group
    s = random_scales(block)["out"]
    assert block.self_attn.o_proj.in_features == 2 * s.numel()


def test_o_channel_map_follows_grouped_query_attention(tiny_llama_dir):
    block = decoder_layers(load_torch_model(tiny_llama_dir))[0]  # 4 query heads, 2 kv, hd 24
    idx = let.o_channel_to_v(block, LAYOUT)
    want = np.concatenate([np.arange(24) + 24 * (h // 2) for h in range(4)])
    np.testing.assert_array_equal(idx.numpy(), want)


def _block_inputs(model_dir):
    """Block 0 of a tiny model, its inputs, and every linear's inputs as NumPy [tokens, K]."""
    model = load_torch_model(model_dir)
    x, (kwargs, *_) = capture_block_inputs(model, random_ids(), torch.device("cpu"))
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
    return block, x, kwargs, names, {n: np.concatenate(v) for n, v in seen.items()}


def test_initial_scales_follow_smoothquant(tiny_llama_dir):
    block, x, kwargs, names, seen = _block_inputs(tiny_llama_dir)
    mods = dict(block.named_modules())
    ranges = linear_input_range(block, x, kwargs, names)
    for n in names:
        np.testing.assert_array_equal(ranges[n][0].numpy(), seen[n].min(0))
        np.testing.assert_array_equal(ranges[n][1].numpy(), seen[n].max(0))
    absmax = {n: torch.maximum(-lo, hi) for n, (lo, hi) in ranges.items()}
    alpha = 0.75
    scales = let.init_scales(block, LAYOUT, absmax, alpha)

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
    assert "down" not in let.init_scales(block, LAYOUT, absmax, alpha, down=False)


def test_initial_shifts_are_channel_midpoints(tiny_llama_dir):
    block, x, kwargs, names, seen = _block_inputs(tiny_llama_dir)
    shifts = let.init_shifts(block, LAYOUT, linear_input_range(block, x, kwargs, names))
    def mid(a: np.ndarray) -> np.ndarray:
        return (a.min(0) + a.max(0)) / 2

    np.testing.assert_allclose(shifts["qkv"].numpy(), mid(seen["self_attn.q_proj"]), rtol=1e-6)
    np.testing.assert_allclose(shifts["fc1"].numpy(), mid(seen["mlp.gate_proj"]), rtol=1e-6)
    # v channel (kv head k, dim j): the range over the query heads 2k, 2k+1 reading it
    o_in = seen["self_attn.o_proj"].reshape(-1, 2, 2, 24)
    want = (o_in.min((0, 2)) + o_in.max((0, 2))).reshape(-1) / 2
    np.testing.assert_allclose(shifts["out"].numpy(), want, rtol=1e-6)
    assert set(shifts) == {"qkv", "fc1", "out"}


def _data(model_dir):
    model = load_torch_model(model_dir)
    x, (kwargs, *_) = capture_block_inputs(model, random_ids(), torch.device("cpu"))
    block = decoder_layers(model)[0]
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    fp_out = forward_all(block, x, kwargs)
    return BlockData(0, block, block_layout(model), {n: n for n in names}, kwargs, x, fp_out,
                     x.clone())


@pytest.mark.parametrize("act_bits,shift", [(None, 0), (4, 0), (4, 1)])
def test_one_let_lwc_step_lowers_the_block_loss(tiny_llama_dir, act_bits, shift):
    data = _data(tiny_llama_dir)
    data.block.requires_grad_(False)
    names = list(data.linears)
    scales, shifts = let.block_let(data, {"alpha": 0.5, "down_scale": 1, "shift": shift})
    assert (shifts is not None) == bool(shift)
    omni = OmniBlock(data.block, data.layout, names, QuantSpec(4, -1), scales, act_bits, shifts)
    assert len(omni.let_parameters()) == 4 + 3 * shift
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
    omni = OmniBlock(data.block, data.layout, names, QuantSpec(3, 32), random_scales(data.block),
                     act_bits=6, shifts=random_shifts(data.block))
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


def test_smoothquant_shift_removes_channel_offsets(tiny_llama_dir):
    """Norms whose outputs sit far from 0 in a few channels stretch every token's range; the
    midpoint shift takes the offset out of the quantized activations (W8A4 error)."""
    def model_with_offsets():
        model = load_torch_model(tiny_llama_dir)
        with torch.no_grad():
            for block in decoder_layers(model):
                for norm in (block.input_layernorm, block.post_attention_layernorm):
                    add_bias(norm)
                    norm.bias[[3, 40, 77]] = torch.tensor([20.0, -15.0, 25.0])
        return model

    ids = random_ids(2, 32)
    with torch.no_grad():
        want = model_with_offsets()(ids).logits
    errors = {}
    for shift in (0, 1):
        model = model_with_offsets()
        defaults = {"small": {"alpha": 0.5, "down_scale": 1, "shift": shift}}
        ctx = make_ctx(tiny_llama_dir, QuantSpec(8, -1), "smoothquant", defaults, nsamples=2,
                       seqlen=32)
        ctx.act_bits = 4
        names = quantized_linear_names(model)
        run_smoothquant(model, names, ctx, random_ids())
        with torch.no_grad(), act_quant(model, names, 4):
            errors[shift] = (model(ids).logits - want).pow(2).mean().item()
    assert errors[1] < 0.5 * errors[0]


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
    defaults = {"small": {"alpha": 0.5, "down_scale": 1, "shift": 0}}
    ctx = make_ctx(tiny_llama_dir, spec, "smoothquant", defaults, nsamples=2, seqlen=32)
    ctx.act_bits = 4
    run_smoothquant(smooth, quantized_linear_names(smooth), ctx, random_ids())
    assert error(smooth) < 0.5 * error(rtn)


def test_omniquant_let_resume_restores_folded_norms_and_biases(tiny_llama_dir, isolated_cache,
                                                               monkeypatch):
    def run(**settings):
        model = load_torch_model(tiny_llama_dir)
        ctx = make_ctx(tiny_llama_dir, QuantSpec(4, -1), "omniquant", omniquant.defaults(4, 4),
                       nsamples=2, seqlen=32, epochs=1, let=1, shift=1, **settings)
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
    assert "model.layers.1.input_layernorm.bias" in model.state_dict()


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_let_checkpoint_converts_with_no_new_tensor(family, request, tmp_path, isolated_cache):
    """A weight-only LET checkpoint is an ordinary fused folder: MLC's q0f32 reads it back to
    the same logits, and the asymmetric scheme keeps its codes bit for bit."""
    from lowbit.compiler.convert import ConvertArgs, convert
    from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
    from lowbit.fused import load_fused, make_qconfig, save_fused

    model_dir = request.getfixturevalue(f"tiny_{family}_dir")  # qwen3: q/k norms after q/k
    model = load_torch_model(model_dir)
    spec = QuantSpec(4, 32)
    ctx = make_ctx(model_dir, spec, "omniquant", omniquant.defaults(4), nsamples=2,
                   seqlen=32, epochs=1, let=1)
    layers = quantized_linear_names(model)
    norm_before = model.model.layers[0].input_layernorm.weight.clone()
    quantized = omniquant.run_omniquant(model, layers, ctx, random_ids())
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norm_before)
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    save_fused(fused_dir, model, quantized, make_qconfig("omniquant", spec, layers), model_dir)
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


def test_shift_checkpoint_round_trips_with_its_biases(tiny_llama_dir, tmp_path, isolated_cache):
    """W4A4 LET with shift on bias-free Llama: the fused folder stores the norm and linear
    biases, loading attaches them and reproduces the calibrated model's logits exactly;
    convert refuses the activation-quantized checkpoint in one line."""
    from lowbit.compiler.convert import ConvertArgs, convert
    from lowbit.errors import LowbitError
    from lowbit.fused import load_fused, make_qconfig, save_fused

    model = load_torch_model(tiny_llama_dir)
    spec = QuantSpec(4, -1)
    ctx = make_ctx(tiny_llama_dir, spec, "omniquant", omniquant.defaults(4, 4), nsamples=2,
                   seqlen=32, epochs=1, let=1, shift=1)
    ctx.act_bits = 4
    layers = quantized_linear_names(model)
    quantized = omniquant.run_omniquant(model, layers, ctx, random_ids())
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    save_fused(fused_dir, model, quantized, make_qconfig("omniquant", spec, layers, 4),
               tiny_llama_dir)
    fused = load_fused(fused_dir)
    state = fused.model.state_dict()
    for name in ("input_layernorm", "post_attention_layernorm", "self_attn.o_proj", "mlp.up_proj"):
        assert state[f"model.layers.0.{name}.bias"].abs().sum() > 0, name
    assert "model.layers.0.mlp.down_proj.bias" not in state
    x = random_ids(2, 16)
    with torch.no_grad(), act_quant(model, layers, 4):
        want = model(x).logits
    with torch.no_grad():
        torch.testing.assert_close(fused.model(x).logits, want, rtol=0, atol=0)
    with pytest.raises(LowbitError, match="quantizes activations"):
        convert(ConvertArgs(str(fused_dir), "q0f32", tmp_path / "q0", progress=False))
    assert not (tmp_path / "q0").exists()
