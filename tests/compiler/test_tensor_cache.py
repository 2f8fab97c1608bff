"""tensor-cache.json written with TVM's writer loads back equal with TVM's loader and ours."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowbit.artifact import TENSOR_CACHE
from lowbit.compiler.tensor_cache import read_tensor_cache, write_tensor_cache
from lowbit.errors import LowbitError


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a.q_weight": rng.integers(0, 2**32, size=(7, 5), dtype=np.uint32),
        "a.q_scale": rng.standard_normal((7, 2)).astype(np.float16),
        "a.q_zero": rng.integers(0, 16, size=(7, 2), dtype=np.uint8),
        "norm.weight": rng.standard_normal(9).astype(np.float32),
    }


def test_tvm_loader_reads_what_we_wrote(tmp_path, arrays):
    import tvm
    from tvm.contrib import tvmjs

    write_tensor_cache(iter(arrays.items()), tmp_path, lambda: {"ParamSize": len(arrays)})
    loaded, meta = tvmjs.load_tensor_cache(str(tmp_path), tvm.cpu())
    assert meta == {"ParamSize": 4} and set(loaded) == set(arrays)
    ours, _ = read_tensor_cache(tmp_path)
    for name, want in arrays.items():
        got = loaded[name].numpy()
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)  # fp32 stays fp32: raw encoding, not bf16
        np.testing.assert_array_equal(ours[name], want)


def _shard(tmp_path):
    info = json.loads((tmp_path / TENSOR_CACHE).read_text())
    return tmp_path / info["records"][0]["dataPath"]


def test_truncated_missing_corrupt_shard(tmp_path, arrays):
    write_tensor_cache(iter(arrays.items()), tmp_path, dict)
    shard = _shard(tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[:-3])
    with pytest.raises(LowbitError, match="truncated"):
        read_tensor_cache(tmp_path)
    shard.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(LowbitError, match="md5"):
        read_tensor_cache(tmp_path)
    shard.unlink()
    with pytest.raises(LowbitError, match="missing weight shard"):
        read_tensor_cache(tmp_path)
    (tmp_path / TENSOR_CACHE).unlink()
    with pytest.raises(LowbitError, match="not an MLC weight folder"):
        read_tensor_cache(tmp_path)
