"""MLC weight folders (``tensor-cache.json`` + ``params_shard_*.bin``) → TVM runtime tensors.

Every shard's size and md5 (recorded by TVM's writer) is checked first. Shards are memory-mapped
copy-on-write and each record becomes a zero-copy TVM tensor when it is 64-byte aligned (DLPack's
rule); unaligned records and bf16-encoded fp32 records are copied.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowbit.errors import LowbitError

CACHE_JSON = "tensor-cache.json"
_ALIGN = 64


@dataclass(frozen=True)
class ParamRecord:
    """One tensor of the cache: where it lives and what it is."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str  # "raw" or "f32-to-bf16"
    shard: str
    offset: int
    nbytes: int


@dataclass
class TensorCache:
    """The parsed ``tensor-cache.json`` of an MLC folder."""

    folder: Path
    records: dict[str, ParamRecord]  # in file order
    shards: list[dict]
    metadata: dict


def read_tensor_cache_index(folder: Path) -> TensorCache:
    """Parse ``tensor-cache.json`` (no shard is read)."""
    folder = Path(folder)
    path = folder / CACHE_JSON
    if not path.is_file():
        raise LowbitError(f"{folder} is not an MLC weight folder (no {CACHE_JSON})")
    try:
        info = json.loads(path.read_text())
        records = {
            r["name"]: ParamRecord(
                r["name"], tuple(r["shape"]), r["dtype"], r.get("format", "raw"),
                shard["dataPath"], r["byteOffset"], r["nbytes"],
            )
            for shard in info["records"]
            for r in shard["records"]
        }
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LowbitError(f"{path} is not a valid tensor cache index ({type(e).__name__}: {e})") from None
    return TensorCache(folder, records, info["records"], info.get("metadata", {}))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_shards(cache: TensorCache, check_md5: bool = True) -> None:
    """Every shard exists with the recorded size (and md5), else a one-line :class:`LowbitError`."""
    for shard in cache.shards:
        path = cache.folder / shard["dataPath"]
        if not path.is_file():
            raise LowbitError(f"missing weight shard {path}")
        size = path.stat().st_size
        if size != shard["nbytes"]:
            raise LowbitError(f"weight shard {path} has {size} bytes, expected {shard['nbytes']} (truncated?)")
        if check_md5 and "md5sum" in shard and _md5(path) != shard["md5sum"]:
            raise LowbitError(f"weight shard {path} fails its md5 check (corrupted)")


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def record_array(rec: ParamRecord, shard: np.ndarray) -> np.ndarray:
    """The record's data as a NumPy array: a view into the mapped shard when no decoding is needed."""
    buf = shard[rec.offset : rec.offset + rec.nbytes]
    if rec.encoding == "f32-to-bf16" and rec.dtype == "float32":
        return _bf16_to_f32(buf.view(np.uint16)).reshape(rec.shape)
    if rec.dtype == "bfloat16":
        raise LowbitError(f"{rec.name}: bfloat16 weights are not supported by this runtime")
    return buf.view(np.dtype(rec.dtype)).reshape(rec.shape)


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
        if rec.shard not in maps:
            maps[rec.shard] = np.memmap(cache.folder / rec.shard, dtype=np.uint8, mode="c")
        arr = record_array(rec, maps[rec.shard])
        on_cpu = device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        out.append(_to_tvm(arr, device) if on_cpu else tvm.runtime.tensor(np.ascontiguousarray(arr), device))
    return out
