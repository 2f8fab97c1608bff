"""Weight loading: TVM's own writer produces the folder; the runtime reads it back, checked."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from lowbit.artifact import read_tensor_cache_index
from lowbit.errors import LowbitError
from lowbit.runtime.weights import load_params


@pytest.fixture()
def cache_dir(tmp_path):
    from tvm.contrib import tvmjs

    rng = np.random.default_rng(0)
    params = {
        "a.weight": rng.normal(size=(7, 5)).astype(np.float32),  # 140 B: the next record is unaligned
        "b.q_weight": rng.integers(0, 2**32, size=(16, 3), dtype=np.uint32),
        "c.q_scale": rng.normal(size=(9,)).astype(np.float16),
        "d.bias": rng.normal(size=(64,)).astype(np.float32),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        tvmjs.dump_tensor_cache(params, str(tmp_path), encode_format="raw", shard_cap_mb=1,
                                show_progress=False)
    return tmp_path, params


def test_load_params_equals_written_arrays(cache_dir):
    folder, params = cache_dir
    cache = read_tensor_cache_index(folder)
    names = list(reversed(params))  # any order the library asks for
    tensors = load_params(cache, names)
    for name, t in zip(names, tensors, strict=True):
        np.testing.assert_array_equal(t.numpy(), params[name])
        assert str(t.dtype) == str(params[name].dtype)


def test_bf16_encoded_fp32_is_decoded(tmp_path):
    from tvm.contrib import tvmjs

    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        tvmjs.dump_tensor_cache({"x": x}, str(tmp_path), encode_format="f32-to-bf16", show_progress=False)
    (got,) = load_params(read_tensor_cache_index(tmp_path), ["x"])
    ref = ((x.view(np.uint32) + 0x7FFF + ((x.view(np.uint32) >> 16) & 1)) >> 16 << 16).view(np.float32)
    np.testing.assert_array_equal(got.numpy(), ref)  # round-to-nearest-even bf16, widened


def test_missing_shard(cache_dir):
    folder, params = cache_dir
    next(folder.glob("params_shard_*.bin")).unlink()
    with pytest.raises(LowbitError, match="missing weight shard"):
        load_params(read_tensor_cache_index(folder), list(params))


def test_truncated_shard(cache_dir):
    folder, params = cache_dir
    shard = next(folder.glob("params_shard_*.bin"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(LowbitError, match="truncated"):
        load_params(read_tensor_cache_index(folder), list(params))


def test_corrupted_shard(cache_dir):
    folder, params = cache_dir
    shard = next(folder.glob("params_shard_*.bin"))
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LowbitError, match="md5"):
        load_params(read_tensor_cache_index(folder), list(params))
    load_params(read_tensor_cache_index(folder), list(params), check_md5=False)  # size still fits


def test_missing_index_and_missing_weight(cache_dir, tmp_path_factory):
    folder, _ = cache_dir
    with pytest.raises(LowbitError, match="not an MLC weight folder"):
        read_tensor_cache_index(tmp_path_factory.mktemp("empty"))
    with pytest.raises(LowbitError, match="lacks weight nope"):
        load_params(read_tensor_cache_index(folder), ["a.weight", "nope"])
    (folder / "tensor-cache.json").write_text("{not json")
    with pytest.raises(LowbitError, match="not a valid tensor cache index"):
        read_tensor_cache_index(folder)
