"""The MLC artifact contract: chat-config reader, library metadata schema, system-lib prefixes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lowbit.artifact import (
    METADATA_FORMAT,
    LibraryMetadata,
    read_chat_config,
    read_tensor_cache_index,
    system_lib_prefix,
)
from lowbit.errors import LowbitError


def test_chat_config_errors_are_one_line(tmp_path):
    with pytest.raises(LowbitError, match="not an MLC model folder"):
        read_chat_config(tmp_path)
    (tmp_path / "mlc-chat-config.json").write_text("{oops")
    with pytest.raises(LowbitError, match="not a valid chat config"):
        read_chat_config(tmp_path)
    (tmp_path / "mlc-chat-config.json").write_text(json.dumps({"model_type": "llama", "quantization": "q4f16_1"}))
    with pytest.raises(LowbitError, match="has no 'model_config'"):
        read_chat_config(tmp_path)
    (tmp_path / "tensor-cache.json").write_text(json.dumps({"records": [{"dataPath": "a.bin"}]}))
    with pytest.raises(LowbitError, match="not a valid tensor cache index"):
        read_tensor_cache_index(tmp_path)


def test_metadata_round_trip_and_old_format():
    meta = LibraryMetadata("llama", "q4f16_1", "cuda", "cuda", "float16", 2048, 512,
                           params=[{"name": "w", "shape": [2, 3], "dtype": "uint32"}])
    assert LibraryMetadata.from_json(meta.to_json()) == meta
    old = {"format": 1, "model_type": "llama", "quantization": "q0f32", "compute_dtype": "float32",
           "target": "llvm -mcpu=x86-64-v4", "context_window_size": 64, "prefill_chunk_size": 64,
           "config": {}, "params": []}
    parsed = LibraryMetadata.from_json(json.dumps(old))
    assert (parsed.target, parsed.device, parsed.tvm_target) == ("llvm", "cpu", "llvm -mcpu=x86-64-v4")
    with pytest.raises(LowbitError, match="newer than this lowbit"):
        LibraryMetadata.from_json(json.dumps({**old, "format": METADATA_FORMAT + 1}))


def test_system_lib_prefix_is_a_c_identifier_per_model():
    a = system_lib_prefix("qwen2", "w4a16g128asym", '{"a": 1}')
    assert a.startswith("qwen2_w4a16g128asym_") and a.endswith("_") and a.replace("_", "").isalnum()
    assert a == system_lib_prefix("qwen2", "w4a16g128asym", '{"a": 1}')
    assert a != system_lib_prefix("qwen2", "w4a16g128asym", '{"a": 2}')


def test_artifact_module_imports_neither_torch_nor_the_tvm_compiler():
    code = ("import sys, lowbit.artifact; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tvm', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
