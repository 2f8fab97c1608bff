"""MLC's weight files: ``tensor-cache.json`` + ``params_shard_*.bin``.

Written with TVM's own writer (``tvm.contrib.tvmjs.dump_tensor_cache``, raw encoding so fp32
stays fp32; MLC's loader reads each record's ``format``). Read back with NumPy after checking
every shard's size and md5 against the records the writer made (:mod:`lowbit.artifact`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from lowbit.artifact import read_tensor_cache_index, record_array, verify_shards

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


def read_tensor_cache(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(name → array, metadata) of an MLC weight folder, every shard verified."""
    cache = read_tensor_cache_index(folder)
    verify_shards(cache)
    shards = {s["dataPath"]: np.fromfile(cache.folder / s["dataPath"], dtype=np.uint8) for s in cache.shards}
    arrays = {name: record_array(rec, shards[rec.shard]).copy() for name, rec in cache.records.items()}
    return arrays, cache.metadata
