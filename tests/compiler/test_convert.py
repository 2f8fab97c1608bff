"""`lowbit convert` end to end on tiny models (and once on the bundled model), plus bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowbit.calib import CalibrateArgs, calibrate
from lowbit.cli import main
from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
from lowbit.compiler.requantize import mlc_quantize
from lowbit.compiler.schemes import HEAD_Q8, SCHEMES
from lowbit.compiler.tensor_cache import read_tensor_cache
from lowbit.errors import LowbitError
from lowbit.fused import load_fused
from lowbit.quantizer import quantize


def _fused(tmp_path_factory, model_dir: Path, bits: int, group: int, sym: bool = False,
           codebook: str | None = None) -> Path:
    out = tmp_path_factory.mktemp("fused") / f"w{bits}g{group}{codebook or ('sym' if sym else 'asym')}"
    calibrate(CalibrateArgs(str(model_dir), "rtn", bits, group, sym, out, progress=False,
                            codebook=codebook))
    return out


def _convert(src: Path | str, scheme: str, out: Path) -> Path:
    convert(ConvertArgs(str(src), scheme, out, progress=False))
    return out


def _assert_linears_equal(mlc_dir: Path, fused_dir: Path) -> None:
    fused = load_fused(fused_dir)
    state = read_mlc(mlc_dir).state_dict
    ref = fused.model.state_dict()
    for name in fused.quantized:
        assert torch.equal(state[f"{name}.weight"], ref[f"{name}.weight"]), name


@pytest.mark.parametrize("bits,group", [(4, 128), (3, 64), (2, 32)])
def test_fused_asym_is_kept_bit_exact(tmp_path_factory, tmp_path, tiny_llama_dir, bits, group):
    """HF → fused RTN → w{b}a16g{G}asym → reader: the fused fake-quant weights, bit for bit."""
    fused = _fused(tmp_path_factory, tiny_llama_dir, bits, group)
    out = _convert(fused, f"w{bits}a16g{group}asym", tmp_path / "mlc")
    _assert_linears_equal(out, fused)
    arrays, meta = read_tensor_cache(out)
    assert meta["lowbit"]["added_error"] == {}
    assert len(meta["lowbit"]["lossless_linears"]) == 14
    # MLC names and shapes: qkv fused along N, K = 96 padded to whole groups, fp16 embedding
    k_pad = -(-96 // group) * group
    assert arrays["model.layers.0.self_attn.qkv_proj.q_weight"].shape == (4 * 24 + 2 * 2 * 24, k_pad * bits // 32)
    assert arrays["model.layers.1.mlp.gate_up_proj.q_zero"].shape == (320, -(-96 // group))
    assert arrays["model.embed_tokens.weight"].dtype == np.float16
    assert "lm_head.weight" not in arrays  # tied
    ref = load_fused(fused).model.state_dict()
    state = read_mlc(out).state_dict
    for name in ("model.norm.weight", "model.layers.1.input_layernorm.weight", "model.embed_tokens.weight"):
        assert torch.equal(state[name], ref[name].half().float())


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_qwen2_dir"])  # tied, untied head
def test_q8head_stores_the_head_in_8_bits(tmp_path_factory, tmp_path, model, request):
    """``…_q8head``: the linears as the base scheme (fused codes kept), the embedding and an untied
    lm_head in MLC's symmetric math with m = 127 per 32 (``test_packing`` checks that math against
    a NumPy port of MLC's)."""
    hf = request.getfixturevalue(model)
    fused = _fused(tmp_path_factory, hf, 2, 32)
    head = _convert(fused, "w2a16g32asym_q8head", tmp_path / "head")
    plain_arrays, _ = read_tensor_cache(_convert(fused, "w2a16g32asym", tmp_path / "plain"))
    arrays, meta = read_tensor_cache(head)
    edges = {"model.embed_tokens", "lm_head"} & {n.rsplit(".", 1)[0] for n in arrays}
    assert edges == ({"model.embed_tokens"} if model == "tiny_llama_dir" else {"model.embed_tokens", "lm_head"})
    for name, arr in plain_arrays.items():
        if name.rsplit(".", 1)[0] not in edges:
            np.testing.assert_array_equal(arrays[name], arr, err_msg=name)
    assert len(meta["lowbit"]["lossless_linears"]) == 14 and set(meta["lowbit"]["added_error"]) == edges
    ref = load_fused(fused).model.state_dict()
    state = read_mlc(head).state_dict
    for module in edges:
        w = ref[f"{module}.weight"]
        want = mlc_quantize(w, HEAD_Q8)
        assert want.codes.max() > 200 and want.codes.min() < 50  # the 8-bit range is in use
        assert torch.equal(state[f"{module}.weight"], want.dequantize(torch.float32))
        assert arrays[f"{module}.q_scale"].shape == (w.shape[0], w.shape[1] // 32)
        err = (state[f"{module}.weight"] - w.float()).abs().max().item()
        assert meta["lowbit"]["added_error"][module]["max_abs"] == pytest.approx(err, rel=1e-5)


def test_rtn_on_the_fly_equals_fused_route(tmp_path_factory, tmp_path, tiny_llama_dir):
    fused = _fused(tmp_path_factory, tiny_llama_dir, 4, 128)
    via_fused, _ = read_tensor_cache(_convert(fused, "w4a16g128asym", tmp_path / "a"))
    direct, _ = read_tensor_cache(_convert(tiny_llama_dir, "w4a16g128asym", tmp_path / "b"))
    assert via_fused.keys() == direct.keys()
    for name in direct:
        np.testing.assert_array_equal(direct[name], via_fused[name])


@pytest.mark.parametrize("scheme", ["q4f16_1", "q4f32_1"])
def test_sym_g32_fused_to_q4_is_lossless(tmp_path_factory, tmp_path, tiny_llama_dir, scheme):
    fused = _fused(tmp_path_factory, tiny_llama_dir, 4, 32, sym=True)
    out = _convert(fused, scheme, tmp_path / "mlc")
    _assert_linears_equal(out, fused)
    meta = read_tensor_cache(out)[1]["lowbit"]
    assert len(meta["lossless_linears"]) == 14
    assert list(meta["added_error"]) == ["model.embed_tokens"]  # quantize_embedding, from float
    emb = load_fused(fused).model.state_dict()["model.embed_tokens.weight"]
    want = mlc_quantize(emb, SCHEMES[scheme]).dequantize(torch.float32)
    assert torch.equal(read_mlc(out).state_dict["model.embed_tokens.weight"], want)


def test_requantization_error_is_recorded_and_printed(tmp_path_factory, tmp_path, tiny_llama_dir):
    fused = _fused(tmp_path_factory, tiny_llama_dir, 4, 128)
    out = tmp_path / "mlc"
    res = CliRunner().invoke(main, ["convert", str(fused), "--scheme", "q3f16_1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "q3f16_1:" in res.output and "worst relative Frobenius" in res.output
    errors = read_tensor_cache(out)[1]["lowbit"]["added_error"]
    ref = load_fused(fused)
    state, fused_state = read_mlc(out).state_dict, ref.model.state_dict()
    assert len(errors) == 15  # 14 linears + the embedding
    for name in ref.quantized:
        diff = (state[f"{name}.weight"].double() - fused_state[f"{name}.weight"].double())
        assert errors[name]["max_abs"] == pytest.approx(diff.abs().max().item(), rel=1e-6)
        rel = diff.norm().item() / fused_state[f"{name}.weight"].double().norm().item()
        assert errors[name]["rel_fro"] == pytest.approx(rel, rel=1e-4)
        assert 0 < errors[name]["rel_fro"] < 0.5


def test_qwen2_names_biases_and_untied_head(tmp_path_factory, tmp_path, tiny_qwen2_dir):
    fused = _fused(tmp_path_factory, tiny_qwen2_dir, 4, 64)
    out = _convert(fused, "w4a16g64asym", tmp_path / "mlc")
    _assert_linears_equal(out, fused)
    arrays, _ = read_tensor_cache(out)
    assert arrays["model.layers.0.self_attn.c_attn.bias"].shape == (4 * 24 + 2 * 2 * 24,)
    assert arrays["lm_head.weight"].dtype == np.float16
    ref, state = load_fused(fused).model.state_dict(), read_mlc(out).state_dict
    for p in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.1.self_attn.{p}.bias"
        assert torch.equal(state[name], ref[name].half().float())
    q0 = _convert(fused, "q0f32", tmp_path / "q0")
    x = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(load_mlc_model(q0)(x).logits, load_fused(fused).model(x).logits,
                                   rtol=0, atol=0)


def _tmp_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith(".tmp")]


def test_bad_inputs_are_one_line_errors(tmp_path_factory, tmp_path, tiny_llama_dir):
    fused = _fused(tmp_path_factory, tiny_llama_dir, 4, 128)
    run = CliRunner().invoke
    cases = {
        "unknown scheme 'q5f16'": [str(fused), "--scheme", "q5f16"],
        "w3a16g128asym cannot hold the 4-bit group 128 codes": [str(fused), "--scheme", "w3a16g128asym"],
        "w4a16g64asym cannot hold": [str(fused), "--scheme", "w4a16g64asym"],
        "nf3a16g128 holds nf3 codes, not the 4-bit integer codes": [str(fused), "--scheme", "nf3a16g128"],
        "not found": [str(tmp_path / "nope"), "--scheme", "q4f16_1"],
    }
    for message, argv in cases.items():
        out = tmp_path / "out"
        res = run(main, ["convert", *argv, "-o", str(out)])
        assert res.exit_code == 1 and message in res.output, res.output
        assert res.output.count("\n") == 2  # the "convert: …" echo and the error line
        assert not out.exists() and not _tmp_leftovers(tmp_path)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    res = run(main, ["convert", str(fused), "--scheme", "q4f16_1", "-o", str(existing)])
    assert res.exit_code == 1 and "already exists" in res.output
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("group", [128, 64])
def test_fused_nf3_is_kept_bit_exact(tmp_path_factory, tmp_path, tiny_llama_dir, group):
    """HF → fused NF3 RTN → nf3a16g{G} → reader: the fused NF3 weights, bit for bit (K = 96 and
    160 end in partial groups); the stored arrays are the checkpoint's codes and scales."""
    fused = _fused(tmp_path_factory, tiny_llama_dir, 3, group, codebook="nf3")
    out = _convert(fused, f"nf3a16g{group}", tmp_path / "mlc")
    _assert_linears_equal(out, fused)
    arrays, meta = read_tensor_cache(out)
    assert meta["lowbit"]["added_error"] == {} and meta["lowbit"]["source_quantization"] == f"w3g{group}nf3"
    assert len(meta["lowbit"]["lossless_linears"]) == 14
    assert not any(name.endswith(".q_zero") for name in arrays)
    assert arrays["model.embed_tokens.weight"].dtype == np.float16
    down = load_fused(fused).quantized["model.layers.1.mlp.down_proj"]
    k_pad = -(-160 // group) * group
    assert arrays["model.layers.1.mlp.down_proj.q_weight"].shape == (96, k_pad * 3 // 32)
    np.testing.assert_array_equal(arrays["model.layers.1.mlp.down_proj.q_scale"], down.scales.numpy())
    codes = down.codes.numpy().astype(np.uint32)
    words = arrays["model.layers.1.mlp.down_proj.q_weight"]  # the first run of 32, as FORMAT.md draws it
    assert words[:, 0].tolist() == sum((codes[:, j] & 3) << (2 * j) for j in range(16)).tolist()
    assert words[:, 2].tolist() == sum((codes[:, j] >> 2) << j for j in range(32)).tolist()


def test_nf3_converts_only_to_its_nf3_scheme(tmp_path_factory, tmp_path, tiny_llama_dir):
    fused = _fused(tmp_path_factory, tiny_llama_dir, 3, 128, codebook="nf3")
    cases = {
        "w3a16g128asym": "w3a16g128asym cannot hold the nf3 group 128 codes",
        "q3f16_1": "q3f16_1 cannot hold the nf3 group 128 codes",
        "q0f32": "q0f32 cannot hold the nf3 group 128 codes",
        "nf3a16g64": "nf3a16g64 cannot hold the nf3 group 128 codes",
    }
    for scheme, message in cases.items():
        out = tmp_path / "out"
        res = CliRunner().invoke(main, ["convert", str(fused), "--scheme", scheme, "-o", str(out)])
        assert res.exit_code == 1 and message in res.output and "use nf3a16g128" in res.output, res.output
        assert res.output.count("\n") == 2
        assert not out.exists() and not _tmp_leftovers(tmp_path)


def test_failure_mid_write_leaves_nothing(tmp_path_factory, tmp_path, tiny_llama_dir):
    """A fused checkpoint whose config disagrees with its tensors fails after shards began."""
    fused = _fused(tmp_path_factory, tiny_llama_dir, 4, 128)
    cfg = json.loads((fused / "config.json").read_text())
    cfg["intermediate_size"] = 192
    (fused / "config.json").write_text(json.dumps(cfg))
    qconfig = json.loads((fused / "quantization_config.json").read_text())
    del qconfig["sha256"]  # as a checkpoint from before checksums: the shapes are checked later
    (fused / "quantization_config.json").write_text(json.dumps(qconfig))
    with pytest.raises(LowbitError, match="gate_up_proj: weight shape"):
        convert(ConvertArgs(str(fused), "w4a16g128asym", tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists() and not _tmp_leftovers(tmp_path)


def test_llama_with_biases_is_refused(tmp_path):
    from tiny_models import save_tiny, tiny_llama_config

    model = save_tiny(tmp_path / "biased", tiny_llama_config(attention_bias=True))
    with pytest.raises(LowbitError, match="no attention/MLP biases"):
        convert(ConvertArgs(str(model), "q4f16_1", tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()


def test_truncated_shard_fails_reader(tmp_path_factory, tmp_path, tiny_llama_dir):
    fused = _fused(tmp_path_factory, tiny_llama_dir, 2, 64)
    out = _convert(fused, "w2a16g64asym", tmp_path / "mlc")
    shard = next(out.glob("params_shard_*.bin"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(LowbitError, match="truncated"):
        load_mlc_model(out)


@pytest.mark.slow
def test_bundled_model_converts(tmp_path, bundled_dir):
    """SmolLM2-135M → w4a16g128asym (RTN on the fly): MLC config, tokenizer, sizes, weights."""
    out = _convert("smollm2-135m", "w4a16g128asym", tmp_path / "mlc")
    chat = json.loads((out / "mlc-chat-config.json").read_text())
    assert chat["model_type"] == "llama" and chat["quantization"] == "w4a16g128asym"
    assert chat["conv_template"]["name"] == "chatml" and chat["conv_template"]["stop_token_ids"] == [2]
    assert chat["model_config"]["num_hidden_layers"] == 30 and chat["context_window_size"] == 8192
    assert chat["tokenizer_info"]["token_postproc_method"] == "byte_level"
    assert "tokenizer.json" in chat["tokenizer_files"] and (out / "tokenizer.json").is_file()
    arrays, meta = read_tensor_cache(out)
    assert meta["ParamSize"] == len(arrays) == 2 + 30 * 14
    # bytes: fp16 embedding + 30 layers of 4-bit codes, fp16 scales, uint8 zeros (K padded to 128)
    per_row = {576: 5, 1536: 12}
    linear_bytes = sum(n * g * 128 // 2 + n * g * 3 for n, g in
                       ((960, per_row[576]), (576, per_row[576]), (3072, per_row[576]), (576, per_row[1536])))
    want = 49152 * 576 * 2 + 30 * (linear_bytes + 2 * 576 * 2) + 576 * 2
    assert meta["ParamBytes"] == want
    assert sum(p.stat().st_size for p in out.glob("params_shard_*.bin")) == want
    from safetensors.torch import load_file

    hf = load_file(str(bundled_dir / "model.safetensors"))
    state = read_mlc(out).state_dict
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.29.mlp.down_proj"):
        want_w = quantize(hf[f"{name}.weight"], SCHEMES["w4a16g128asym"].spec).dequantize()
        assert torch.equal(state[f"{name}.weight"], want_w)
