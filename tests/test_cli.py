"""Bad inputs give one-line errors and leave nothing behind."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lowbit.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, fragment: str):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--method", "nope"], "unknown method"),
        (["--group-size", "48"], "unsupported group size"),
    ],
)
def test_calibrate_bad_options(tiny_llama_dir, tmp_path, args, fragment):
    result = run("calibrate", str(tiny_llama_dir), "-o", str(tmp_path / "out"), *args)
    assert_one_line_error(result, fragment)
    assert leftovers(tmp_path) == []


def test_calibrate_missing_model(tmp_path):
    result = run("calibrate", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "not found")
    assert leftovers(tmp_path) == []


def test_unsupported_architecture(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                            "architectures": ["GPT2LMHeadModel"]}))
    result = run("calibrate", str(tmp_path / "m"), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "unsupported architecture 'GPT2LMHeadModel'")
    assert leftovers(tmp_path) == ["m"]


def test_existing_output_refused_then_overwritten(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("calibrate", str(tiny_llama_dir), "-o", str(out))
    assert_one_line_error(result, "already exists")
    assert leftovers(out) == ["keep.txt"]
    result = run("calibrate", str(tiny_llama_dir), "-o", str(out), "--overwrite", "--bits", "3")
    assert result.exit_code == 0, result.output
    assert "quantization_config.json" in leftovers(out)
    assert leftovers(tmp_path) == ["out"]  # no temp folders left


def test_failure_midway_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    import importlib

    cal = importlib.import_module("lowbit.calib.calibrate")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cal, "save_fused", boom)
    result = run("calibrate", str(tiny_llama_dir), "-o", str(tmp_path / "out"))
    assert result.exit_code != 0
    assert leftovers(tmp_path) == []


def test_list_names_methods_and_models():
    result = run("list")
    assert result.exit_code == 0
    assert "smollm2-135m" in result.output and "rtn" in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if "bits/weight" in line}
    assert "4.5 bits/weight (linears), embedding/lm_head the same" in lines["q4f16_1"]
    assert "3.1875 bits/weight (linears), embedding/lm_head 16 bits/weight" in lines["w3a16g128asym"]
    assert "3.1875 bits/weight (linears), embedding/lm_head 8.5 bits/weight" in lines["w3a16g128asym_q8head"]
    assert "3.25 bits/weight" in lines["nf3a16g128"] and "  llvm" in result.output
    from lowbit.architectures import ARCHITECTURES

    for model_type, arch in ARCHITECTURES.items():
        assert arch.description and f"  {model_type:16s} {arch.description}" in result.output


def test_eval_ppl_on_user_corpus(tiny_llama_dir, tmp_path):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(512)} | {"[UNK]": 0}, "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(model_dir)
    docs = [" ".join(f"w{(i * 7 + j) % 512}" for j in range(300)) for i in range(20)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs))
    out = tmp_path / "ppl.json"
    result = run("eval", "ppl", str(model_dir), "--data", str(corpus), "--split", "test",
                 "--seqlen", "64", "--windows", "4", "-o", str(out))
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert row["windows"] == 4 and row["tokens"] == 4 * 63
    assert 1.0 < row["ppl"] < 2000  # random tiny model: near-uniform over 512 tokens
    result = run("eval", "ppl", str(model_dir), "--data", str(corpus), "--seqlen", "64",
                 "--windows", "400", "-o", str(out), "--overwrite")
    assert_one_line_error(result, "windows of 64")


def test_eval_refuses_existing_default_output(tmp_path, monkeypatch):
    """The default result file is refused like any output, before the model is even looked up."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lowbit-eval").mkdir()
    (tmp_path / "lowbit-eval" / "nowhere-ppl-test.json").write_text("mine")
    assert_one_line_error(run("eval", "ppl", "nowhere"), "already exists (pass --overwrite")
    assert_one_line_error(run("eval", "ppl", "nowhere", "--overwrite"), "model 'nowhere' not found")
    assert (tmp_path / "lowbit-eval" / "nowhere-ppl-test.json").read_text() == "mine"
