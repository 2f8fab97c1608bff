"""MLC weight folders (``tensor-cache.json`` + ``params_shard_*.bin``) → TVM runtime tensors.

Every shard's size and md5 (recorded by TVM's writer) is checked first. Shards are memory-mapped
copy-on-write and each record becomes a zero-copy TVM tensor when it is 64-byte aligned (DLPack's
rule); unaligned records and bf16-encoded fp32 records are copied.
"""

from __future__ import annotations

import numpy as np

from lowbit.artifact import TensorCache, record_array, verify_shards
from lowbit.errors import LowbitError

_ALIGN = 64


def _to_tvm(arr: np.ndarray, device):
    import tvm

    if arr.ctypes.data % _ALIGN == 0 and arr.flags.c_contiguous and arr.flags.writeable:
        return tvm.runtime.from_dlpack(arr)  # zero-copy: the tensor keeps the mapping alive
    return tvm.runtime.tensor(np.ascontiguousarray(arr), device)


def load_params(cache: TensorCache, names: list[str], device=None, check_md5: bool = True) -> list:
    """TVM tensors for ``names`` (in that order), from verified, memory-mapped shards."""
    import tvm

    device = device or tvm.cpu()
    missing = [n for n in names if n not in cache.records]
    if missing:
        raise LowbitError(f"{cache.folder} lacks weight {missing[0]} ({len(missing)} missing): "
                          "is the library built for this model?")
    verify_shards(cache, check_md5)
    maps: dict[str, np.ndarray] = {}
    out = []
    for name in names:
        rec = cache.records[name]
        if rec.dtype == "bfloat16":
            raise LowbitError(f"{rec.name}: bfloat16 weights are not supported by this runtime")
        if rec.shard not in maps:
            maps[rec.shard] = np.memmap(cache.folder / rec.shard, dtype=np.uint8, mode="c")
        arr = record_array(rec, maps[rec.shard])
        on_cpu = device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        out.append(_to_tvm(arr, device) if on_cpu else tvm.runtime.tensor(np.ascontiguousarray(arr), device))
    return out
