"""`lowbit calibrate` with the block-wise methods, end to end on a tiny model with a tokenizer."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lowbit.cli import main
from lowbit.fused import load_fused, read_qconfig


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama plus a 300-token byte-level BPE trained on the default corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lowbit.corpus import split_documents, wiki_documents

    folder = tmp_path_factory.mktemp("tiny_tok")
    shutil.copytree(tiny_llama_dir, folder, dirs_exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(split_documents(wiki_documents(), "calibration")[:200], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method,extra", [
    ("omniquant", ["--epochs", "1"]),
    ("omniquant", ["--epochs", "1", "--let", "--shift", "--act-bits", "4"]),
    ("smoothquant", ["--act-bits", "6", "--alpha", "0.6"]),
    ("gptq", ["--act-order"]),
    ("awq-clip", []),
])
def test_calibrate_cli_writes_a_loadable_fused_folder(tiny_with_tokenizer, tmp_path, monkeypatch,
                                                      method, extra):
    # one cache for the module: the calibration split is tokenized once
    monkeypatch.setenv("LOWBIT_CACHE", str(tiny_with_tokenizer.parent / "cache"))
    out = tmp_path / method
    res = CliRunner().invoke(main, [
        "calibrate", str(tiny_with_tokenizer), "--method", method, "--bits", "3",
        "--group-size", "64", "--nsamples", "2", "--seqlen", "32", "-o", str(out), *extra,
    ])
    assert res.exit_code == 0, res.output
    qconfig = read_qconfig(out)
    assert qconfig["settings"]["nsamples"] == 2 and qconfig["settings"]["preset"] == "small"
    if "--let" in extra:
        assert qconfig["settings"]["let"] == qconfig["settings"]["shift"] == 1
        assert qconfig["act_bits"] == 4
    if "--alpha" in extra:
        assert qconfig["settings"]["alpha"] == 0.6 and qconfig["act_bits"] == 6
    fused = load_fused(out)
    assert fused.quantized and all(q.codes.max() <= 7 for q in fused.quantized.values())
    modules = dict(fused.model.named_modules())
    for name, q in fused.quantized.items():
        assert torch.equal(modules[name].weight.data, q.dequantize())


def test_unknown_preset_is_one_line_error(tiny_with_tokenizer, tmp_path):
    from lowbit.calib import CalibrateArgs, calibrate
    from lowbit.errors import LowbitError

    with pytest.raises(LowbitError, match="unknown preset"):
        calibrate(CalibrateArgs(str(tiny_with_tokenizer), "gptq", 3, 64, False, tmp_path / "o",
                                progress=False, settings={"preset": "huge"}))


@pytest.mark.parametrize("method,extra,match", [
    ("rtn", ["--let"], "rtn takes no settings"),
    ("gptq", ["--let"], "gptq does not take setting.s. let"),
    ("omniquant", ["--shift", "--act-bits", "4"], "shift is part of LET; add --let"),
    ("omniquant", ["--let", "--shift"], "shift only moves quantized activations"),
    ("smoothquant", ["--shift"], "shift only moves quantized activations"),
])
def test_settings_a_method_does_not_take_are_refused(tiny_with_tokenizer, tmp_path, method,
                                                     extra, match):
    res = CliRunner().invoke(main, ["calibrate", str(tiny_with_tokenizer), "--method", method,
                                    *extra, "-o", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert re.search(match, res.output) and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
