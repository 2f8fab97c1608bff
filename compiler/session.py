"""Drive a compiled model on CPU: parameters from an MLC folder, one sequence in a paged KV cache.

The smallest host a library needs (tests, compiled perplexity): embed → prefill / decode between
``kv_state_begin_forward`` and ``kv_state_end_forward``, as MLC's engine calls them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime import ShapeTuple

from lowbit.errors import LowbitError

PAGE_SIZE = 16
METADATA_FUNC = "_metadata"


def _builtin(name: str):
    return tvm.get_global_func(f"vm.builtin.{name}")


def library_metadata(vm) -> dict:
    """The JSON metadata ``lowbit compile`` stores in a library (model, scheme, params)."""
    try:
        return json.loads(str(vm[METADATA_FUNC]()))
    except (AttributeError, KeyError, RuntimeError):
        raise LowbitError("this library has no lowbit metadata (not built by `lowbit compile`)") from None


def params_for(metadata: dict, arrays: dict[str, np.ndarray], device) -> list:
    """The library's parameters in its order, each checked against the recorded shape and dtype."""
    out = []
    for p in metadata["params"]:
        arr = arrays.get(p["name"])
        if arr is None:
            raise LowbitError(f"MLC folder does not match the library: no parameter {p['name']}")
        if list(arr.shape) != p["shape"] or str(arr.dtype) != p["dtype"]:
            raise LowbitError(
                f"MLC folder does not match the library: {p['name']} is {arr.dtype}{list(arr.shape)}, "
                f"the library expects {p['dtype']}{p['shape']}"
            )
        out.append(tvm.runtime.tensor(arr, device))
    return out


class Session:
    """One sequence on a compiled model; ``reset()`` starts a new one."""

    def __init__(self, vm, params: list, hidden: int, max_len: int, prefill_chunk: int):
        self.vm, self.params, self.hidden = vm, params, hidden
        self.device = tvm.cpu()
        self.kv = vm["create_paged_kv_cache"](
            ShapeTuple([1]), ShapeTuple([max_len]), ShapeTuple([prefill_chunk]),
            ShapeTuple([PAGE_SIZE]), ShapeTuple([0]),
        )
        self._add, self._remove = _builtin("kv_state_add_sequence"), _builtin("kv_state_remove_sequence")
        self._begin, self._end = _builtin("kv_state_begin_forward"), _builtin("kv_state_end_forward")
        self._add(self.kv, 0)

    @classmethod
    def load(cls, lib_path: Path, mlc_dir: Path, max_len: int | None = None) -> Session:
        """Load ``lib_path`` and the weights of ``mlc_dir``; refuses a folder that does not match."""
        from lowbit.compiler.tensor_cache import read_tensor_cache

        if not Path(lib_path).is_file():
            raise LowbitError(f"no compiled library at {lib_path}")
        vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
        meta = library_metadata(vm)
        chat = json.loads((Path(mlc_dir) / "mlc-chat-config.json").read_text())
        if chat.get("quantization") != meta["quantization"] or chat.get("model_type") != meta["model_type"]:
            raise LowbitError(
                f"MLC folder is {chat.get('model_type')}/{chat.get('quantization')}, the library was "
                f"built for {meta['model_type']}/{meta['quantization']}"
            )
        arrays, _ = read_tensor_cache(Path(mlc_dir))
        return cls.from_vm(vm, meta, params_for(meta, arrays, tvm.cpu()), max_len)

    @classmethod
    def from_vm(cls, vm, meta: dict, params: list, max_len: int | None = None) -> Session:
        cfg = meta["config"]
        return cls(vm, params, cfg["hidden_size"], max_len or cfg["context_window_size"],
                   cfg["prefill_chunk_size"])

    def reset(self) -> None:
        self._remove(self.kv, 0)
        self._add(self.kv, 0)

    def _embed(self, ids: list[int]) -> tvm.runtime.Tensor:
        t = tvm.runtime.tensor(np.asarray(ids, dtype="int32"), self.device)
        return self.vm["embed"](t, self.params)._create_view((1, len(ids), self.hidden))

    def _run(self, func: str, ids: list[int]) -> np.ndarray:
        self._begin(self.kv, ShapeTuple([0]), ShapeTuple([len(ids)]))
        logits, self.kv = self.vm[func](self._embed(ids), self.kv, self.params)
        self._end(self.kv)
        return logits.numpy()

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Append ``ids``; the last position's logits [vocab] (MLC's ``prefill``)."""
        return self._run("prefill", ids)[0, -1]

    def decode(self, token: int) -> np.ndarray:
        """Append one token; its logits [vocab]."""
        return self._run("decode", [token])[0, -1]

    def all_logits(self, ids: list[int]) -> np.ndarray:
        """Append ``ids``; the logits of every position [len(ids), vocab]."""
        return self._run("prefill_all_logits", ids)[0]


def session_logits_fn(sess: Session):
    """A perplexity ``LogitsFn`` over a compiled model: each window scored on its own."""

    def run(batch: np.ndarray) -> np.ndarray:
        out = []
        for window in batch:
            sess.reset()
            out.append(sess.all_logits([int(t) for t in window]))
        return np.stack(out)

    return run
