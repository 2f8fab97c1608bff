"""BitDistiller: CAKLD, the asymmetric clip search, QAT and its resume, on tiny random models."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lowbit.calib import CalibrateArgs, calibrate
from lowbit.calib.asym_clip import apply_asym_clip, clamp_groups, search_clip
from lowbit.calib.blocks import block_layout
from lowbit.calib.cakld import IGNORE_INDEX, distill_loss, teacher_confidence
from lowbit.calib.qat import (
    TrainConfig,
    attach_fake_quant,
    collate,
    export_quantized,
    micro_batch,
    train,
)
from lowbit.cli import main
from lowbit.fused import load_fused, quantized_linear_names, read_qconfig
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, fake_quantize, group_min_max

# -- CAKLD -------------------------------------------------------------------------------------
# Position 0: teacher logits (0, 0) → p = (1/2, 1/2); student (ln 3, 0) → q = (3/4, 1/4).
KL_QP = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(q‖p) = 0.130812…
KL_PQ = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p‖q) = 0.143841…


def _example():
    student = torch.tensor([[[math.log(3.0), 0.0], [5.0, -5.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [-5.0, 5.0]]])
    labels = torch.tensor([[1, IGNORE_INDEX]])  # position 1 is padding
    return student, teacher, labels


def test_cakld_equals_hand_computed_value():
    student, teacher, labels = _example()
    assert distill_loss("cakld", student, teacher, labels, gamma=0.8).item() == pytest.approx(
        0.8 * KL_QP + 0.2 * KL_PQ, rel=1e-6)
    assert distill_loss("rkl", student, teacher, labels).item() == pytest.approx(KL_QP, rel=1e-6)
    assert distill_loss("fkl", student, teacher, labels).item() == pytest.approx(KL_PQ, rel=1e-6)
    # sequences are summed over positions and averaged over the batch
    both = distill_loss("fkl", student.repeat(2, 1, 1), teacher.repeat(2, 1, 1),
                        torch.tensor([[1, IGNORE_INDEX], [1, 0]]))
    pq_pos1 = sum(a * math.log(a / b) for a, b in zip(
        [1 / (1 + math.exp(10)), 1 / (1 + math.exp(-10))],
        [1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))], strict=True))
    assert both.item() == pytest.approx((KL_PQ + (KL_PQ + pq_pos1)) / 2, rel=1e-5)
    # ce: the student's next-token cross-entropy, −ln q(label of position 1 | position 0)
    ce = distill_loss("ce", student, None, torch.tensor([[1, 1]]))
    assert ce.item() == pytest.approx(-math.log(0.25), rel=1e-6)


def test_teacher_confidence_is_mean_top1_over_real_tokens():
    _, teacher, labels = _example()
    logits = torch.cat([teacher, torch.tensor([[[math.log(9.0), 0.0], [0.0, 0.0]]])])
    total, count = teacher_confidence(logits, torch.tensor([[1, IGNORE_INDEX], [1, 1]]))
    assert count == 3 and total / count == pytest.approx((0.5 + 0.9 + 0.5) / 3, rel=1e-6)


# -- asymmetric clip search --------------------------------------------------------------------
def _error_per_row(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared output error of each row over the tokens of ``x`` [T, K], directly."""
    return ((x.double() @ (q - w).double().T) ** 2).mean(0)


@pytest.mark.parametrize("spec", [QuantSpec(2, 64), QuantSpec(3, 128), QuantSpec(2, 128),
                                  QuantSpec(3, 64, codebook="nf3")], ids=lambda s: s.name)
def test_clip_search_never_increases_the_output_error(spec):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 192, generator=g) * 0.05
    w[torch.rand(w.shape, generator=g) < 0.02] *= 8  # outliers: clipping pays
    x = torch.randn(256, 192, generator=g) * torch.rand(192, generator=g) * 3  # uneven channels
    xmin, xmax = search_clip(w, x.double().T @ x.double() / len(x), spec)
    gmin, gmax = group_min_max(w, spec)
    assert (xmin >= gmin).all() and (xmax <= gmax).all()
    clipped = clamp_groups(w, spec, xmin, xmax)
    before = _error_per_row(w, fake_quantize(w, spec), x)
    after = _error_per_row(w, fake_quantize(clipped, spec), x)
    assert (after <= before * (1 + 1e-9)).all()
    assert after.sum() < 0.9 * before.sum()


def test_apply_clip_clamps_all_but_q_and_k(tiny_llama_dir):
    model = load_torch_model(tiny_llama_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = quantized_linear_names(model)
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    apply_asym_clip(model, layers, QuantSpec(2, 64), ids, n_grid=6, progress=False)
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        if owner not in layers or owner.split(".", 3)[-1] in block_layout(model).clip_skipped:
            assert torch.equal(p, before[name]), name
        else:
            assert p.abs().max() <= before[name].abs().max()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


# -- QAT ---------------------------------------------------------------------------------------
def _sequences(n: int = 8, vocab: int = 512, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(12, 24, (1,), generator=g)),), generator=g)
            for _ in range(n)]


def _student_and_teacher(tiny_llama_dir, spec):
    teacher = load_torch_model(tiny_llama_dir).requires_grad_(False)
    student = copy.deepcopy(teacher)
    attach_fake_quant(student, quantized_linear_names(student), spec)
    return student, teacher


@torch.no_grad()
def _data_loss(student, teacher, seqs, kind="cakld") -> float:
    ids, mask, labels = collate(seqs)
    return distill_loss(kind, student(input_ids=ids, attention_mask=mask).logits,
                        teacher(input_ids=ids, attention_mask=mask).logits, labels, 0.5).item()


@pytest.mark.parametrize("spec", [QuantSpec(2, 64), QuantSpec(3, 128, codebook="nf3")],
                         ids=lambda s: s.name)
def test_a_few_qat_steps_lower_the_loss(tiny_llama_dir, tmp_path, spec):
    student, teacher = _student_and_teacher(tiny_llama_dir, spec)
    seqs = _sequences()
    before = _data_loss(student, teacher, seqs)
    cfg = TrainConfig(steps=6, batch_size=4, grad_accum=2, lr=3e-4)
    losses = train(student, teacher, seqs, cfg, tmp_path / "state.pt", progress=False)
    assert len(losses) == 6
    assert _data_loss(student, teacher, seqs) < 0.8 * before
    # the export is what training saw: the fused weights reproduce the trained student
    layers = quantized_linear_names(student)
    modules = dict(student.named_modules())
    seen = {name: modules[name].weight.detach().clone() for name in layers}  # fake-quant values
    quantized = export_quantized(student, layers, spec)
    for name in layers:
        assert not hasattr(modules[name], "parametrizations")
        assert torch.equal(modules[name].weight, seen[name]), name
        assert torch.equal(quantized[name].dequantize(), seen[name])


def test_bf16_autocast_trains_on_cpu(tiny_llama_dir, tmp_path):
    """``bf16``: the forward passes under bf16 autocast (CPU here; CUDA's default where it
    computes bf16); the loss still falls and the weights stay fp32 for the export."""
    spec, seqs = QuantSpec(2, 64), _sequences()
    losses = {}
    for bf16 in (False, True):
        student, teacher = _student_and_teacher(tiny_llama_dir, spec)
        before = _data_loss(student, teacher, seqs)
        losses[bf16] = train(student, teacher, seqs, TrainConfig(steps=6, batch_size=4, grad_accum=2, lr=3e-4,
                                                                 bf16=bf16), tmp_path / f"state{bf16}.pt", progress=False)
        assert _data_loss(student, teacher, seqs) < 0.8 * before
        assert all(p.dtype == torch.float32 for p in student.parameters())
    assert losses[True][0] != losses[False][0]  # the autocast ran: bf16 arithmetic from the first step


def test_resume_is_exact(tiny_llama_dir, tmp_path):
    spec, seqs = QuantSpec(2, 64), _sequences(6)
    cfg = TrainConfig(steps=4, batch_size=4, grad_accum=2, lr=1e-3, save_every=1, seed=3)
    straight, teacher = _student_and_teacher(tiny_llama_dir, spec)
    ref_losses = train(straight, teacher, seqs, cfg, tmp_path / "a.pt", progress=False)

    first, _ = _student_and_teacher(tiny_llama_dir, spec)
    half = TrainConfig(**{**cfg.__dict__, "steps": 2})
    train(first, teacher, seqs, half, tmp_path / "b.pt", progress=False)  # "interrupted" at 2
    resumed, _ = _student_and_teacher(tiny_llama_dir, spec)  # a fresh process
    losses = train(resumed, teacher, seqs, cfg, tmp_path / "b.pt", resume=True, progress=False)
    assert losses == ref_losses
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    # 6 sequences at batch 4: one batch per epoch, reshuffled each epoch
    assert [len(micro_batch(seqs, 4, 3, i)) for i in range(3)] == [4, 4, 4]
    assert not all(torch.equal(a, b) for a, b in zip(micro_batch(seqs, 4, 3, 0),
                                                      micro_batch(seqs, 4, 3, 1), strict=True))


# -- the command -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_with_eos(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama plus a 300-token byte-level BPE (with ``</s>``) trained on the corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lowbit.corpus import split_documents, wiki_documents

    folder = tmp_path_factory.mktemp("tiny_eos")
    shutil.copytree(tiny_llama_dir, folder, dirs_exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(split_documents(wiki_documents(), "calibration")[:200], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(folder)
    return folder


TINY = {"nsamples": 2, "seqlen": 32, "n_grid": 4, "gen_samples": 4, "gen_tokens": 8, "gen_batch": 4,
        "batch_size": 2, "grad_accum": 1, "steps": 2, "gamma_batches": 1}


@pytest.mark.parametrize("bits,codebook,loss", [(2, None, "cakld"), (3, "nf3", "fkl")])
def test_calibrate_bitdistiller_writes_the_fused_checkpoint(tiny_with_eos, tmp_path, monkeypatch,
                                                            bits, codebook, loss):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    calibrate(CalibrateArgs(str(tiny_with_eos), "bitdistiller", bits, 64, False, out,
                            progress=False, settings={**TINY, "loss": loss}, codebook=codebook))
    settings = read_qconfig(out)["settings"]
    assert settings["steps"] == 2 and settings["preset"] == "small" and settings["loss"] == loss
    assert set(settings["seconds"]) == {"teacher_data", "clip", "train"}
    assert (settings["gamma"] is None) == (loss != "cakld")
    assert settings["train_sequences"] == 4
    fused = load_fused(out)
    assert len(fused.quantized) == 14 and fused.qconfig["codebook"] == codebook
    assert not list((tmp_path / "cache" / "calib-state").iterdir())  # checkpoints removed
    assert len(list((tmp_path / "cache" / "distill-data").iterdir())) == 1  # teacher data kept


def test_bf16_flag_reaches_the_settings_and_is_recorded(tiny_with_eos, tmp_path, monkeypatch):
    """`--bf16` / `--no-bf16` set the setting, unset leaves the device's default (off on CPU);
    the resolved value is what the checkpoint records."""
    import lowbit.calib

    captured = []
    monkeypatch.setattr(lowbit.calib, "calibrate", lambda args: captured.append(args.settings) or "x")
    for flags in ([], ["--bf16"], ["--no-bf16"]):
        res = CliRunner().invoke(main, ["calibrate", str(tiny_with_eos), "--method", "bitdistiller", "--bits", "2",
                                        "-o", str(tmp_path / "o"), *flags])
        assert res.exit_code == 0, res.output
    assert "bf16" not in captured[0] and captured[1]["bf16"] == 1 and captured[2]["bf16"] == 0
    monkeypatch.undo()
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    calibrate(CalibrateArgs(str(tiny_with_eos), "bitdistiller", 2, 64, False, out, progress=False, settings=dict(TINY)))
    assert read_qconfig(out)["settings"]["bf16"] == 0  # CPU: off unless asked


@pytest.mark.parametrize("extra,match", [
    (["--bits", "4"], "bitdistiller quantizes asymmetric 2 or 3-bit"),
    (["--bits", "2", "--group-size", "32"], "groups of 64 or 128"),
    (["--bits", "2", "--nf3"], "nf3 codebook is 3-bit"),
    (["--bits", "2", "--sym"], "asymmetric"),
])
def test_bad_settings_are_one_line_errors(tiny_with_eos, tmp_path, extra, match):
    res = CliRunner().invoke(main, ["calibrate", str(tiny_with_eos), "--method", "bitdistiller",
                                    *extra, "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and match in res.output and "Traceback" not in res.output
