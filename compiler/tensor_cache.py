"""MLC's weight files: ``tensor-cache.json`` + ``params_shard_*.bin``.

Written with TVM's own writer (``tvm.contrib.tvmjs.dump_tensor_cache``, raw encoding so fp32
stays fp32; MLC's loader reads each record's ``format``). Read back with NumPy after checking
every shard's size and md5 against the records the writer made.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from lowbit.errors import LowbitError

CACHE_JSON = "tensor-cache.json"
SHARD_CAP_MB = 32  # MLC's default


def write_tensor_cache(
    params: Iterable[tuple[str, np.ndarray]], folder: Path, metadata: Callable[[], dict]
) -> None:
    """Dump ``params`` into ``folder`` as shards; ``metadata`` is called after the last one."""
    from tvm.contrib import tvmjs

    with contextlib.redirect_stdout(io.StringIO()):  # the writer prints progress lines
        tvmjs.dump_tensor_cache(
            params, str(folder), encode_format="raw", meta_data=metadata,
            shard_cap_mb=SHARD_CAP_MB, show_progress=False,
        )


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_cache_json(folder: Path) -> dict:
    path = Path(folder) / CACHE_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LowbitError(f"{folder} is not an MLC weight folder (no {CACHE_JSON})") from None
    except json.JSONDecodeError as e:
        raise LowbitError(f"{path} is not valid JSON: {e}") from None


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _decode(rec: dict, raw: bytes) -> np.ndarray:
    buf = raw[rec["byteOffset"] : rec["byteOffset"] + rec["nbytes"]]
    shape = rec["shape"]
    if rec["dtype"] == "bfloat16" or (rec["format"] == "f32-to-bf16" and rec["dtype"] == "float32"):
        return _bf16_to_f32(np.frombuffer(buf, dtype=np.uint16)).reshape(shape)
    return np.frombuffer(buf, dtype=np.dtype(rec["dtype"])).reshape(shape).copy()


def verify_shard(folder: Path, shard: dict) -> bytes:
    """The shard's bytes, after checking that it exists and its size and md5 match the record."""
    path = Path(folder) / shard["dataPath"]
    if not path.is_file():
        raise LowbitError(f"missing weight shard {path}")
    size = path.stat().st_size
    if size != shard["nbytes"]:
        raise LowbitError(f"weight shard {path} has {size} bytes, expected {shard['nbytes']} (truncated?)")
    if "md5sum" in shard and _md5(path) != shard["md5sum"]:
        raise LowbitError(f"weight shard {path} fails its md5 check (corrupted)")
    return path.read_bytes()


def read_tensor_cache(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(name → array, metadata) of an MLC weight folder, every shard verified."""
    info = read_cache_json(folder)
    arrays: dict[str, np.ndarray] = {}
    for shard in info["records"]:
        raw = verify_shard(folder, shard)
        for rec in shard["records"]:
            arrays[rec["name"]] = _decode(rec, raw)
    return arrays, info.get("metadata", {})
