"""Run one scheduled TIR function's GPU kernels on this machine's CPU drivers, as TVM's runtimes
would launch them: OpenCL C on PoCL through pyopencl, WGSL on lavapipe through wgpu.

The launch contract is read from the lowered device functions: their parameters in order
(buffers, then scalars) and the extents of their ``blockIdx`` / ``threadIdx`` axes. WGSL binds
the buffers in parameter order and then a uniform of the scalars (32-bit each) followed by the
x grid size (``packGridDimX``), as TVM's WebGPU runtime does.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import numpy as np
import tvm
from target_checks import split_kernels
from tvm import tirx
from tvm.sym.analyzer import Analyzer

AXES = ("x", "y", "z")


@dataclass(frozen=True)
class Kernel:
    name: str
    source: str
    buffers: list[str]  # buffer names, in binding order
    scalars: list[tuple[str, str]]  # (name, dtype)
    grid: tuple[int, int, int]
    block: tuple[int, int, int]


def _thread_extents(stmt, found: dict[str, tirx.PrimExpr]) -> None:
    if isinstance(stmt, tirx.AttrStmt) and stmt.attr_key == "thread_extent":
        found.setdefault(stmt.node.thread_tag, stmt.value)
    if hasattr(stmt, "seq"):
        for s in stmt.seq:
            _thread_extents(s, found)
    elif getattr(stmt, "body", None) is not None:
        _thread_extents(stmt.body, found)


def _dims(extents: dict[str, tirx.PrimExpr], kind: str, analyzer: Analyzer) -> tuple[int, int, int]:
    return tuple(int(analyzer.simplify(extents[f"{kind}.{a}"])) if f"{kind}.{a}" in extents else 1
                 for a in AXES)


def lower(mod: tvm.IRModule, target: tvm.target.Target, sizes: dict[str, int]) -> list[Kernel]:
    """The module's device kernels with their launch shapes for the symbolic ``sizes`` (TVM's
    default TIR pipeline and codegen, as ``tvm.compile`` runs them)."""
    build = importlib.import_module("tvm.tirx.build")  # the module, shadowed by its function
    lowered = tvm.tirx.transform.BindTarget(target)(mod)
    pipeline, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    _, devices = build.split_host_device_mods(pipeline(lowered))
    kernels = []
    for device_target, device_mod in devices.items():
        device_mod = finalize_device()(device_mod)
        sources = split_kernels(build.codegen_build(device_mod, device_target).inspect_source(""))
        for gv, func in device_mod.functions.items():
            analyzer = Analyzer()
            buffers, scalars = [], []
            for p in func.params:
                kind = repr(p.ty)  # T.handle("float16", "global") or T.int64
                if kind.startswith("T.handle"):
                    buffers.append(re.sub(r"_ptr$", "", p.name))
                else:
                    scalars.append((p.name, kind.removeprefix("T.")))
                    analyzer.bind(p, sizes[p.name])
            extents: dict[str, tirx.PrimExpr] = {}
            _thread_extents(func.body, extents)
            grid, block = (_dims(extents, kind, analyzer) for kind in ("blockIdx", "threadIdx"))
            kernels.append(Kernel(gv.name_hint, sources[gv.name_hint], buffers, scalars, grid, block))
    return kernels


def run_opencl(kernels: list[Kernel], arrays: dict[str, np.ndarray], sizes: dict[str, int], cl) -> None:
    """Launch each kernel on PoCL; ``arrays`` (inputs and outputs by buffer name) are updated."""
    platform = next(p for p in cl.get_platforms() if "Portable Computing Language" in p.name)
    ctx = cl.Context(platform.get_devices())
    queue = cl.CommandQueue(ctx)
    flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
    bufs = {name: cl.Buffer(ctx, flags, hostbuf=np.ascontiguousarray(a)) for name, a in arrays.items()}
    for k in kernels:
        program = cl.Program(ctx, k.source).build()
        args = [bufs[b] for b in k.buffers] + [np.dtype(dt).type(sizes[n]) for n, dt in k.scalars]
        global_size = tuple(g * b for g, b in zip(k.grid, k.block, strict=True))
        getattr(program, k.name)(queue, global_size, k.block, *args)
    for name, buf in bufs.items():
        cl.enqueue_copy(queue, arrays[name], buf)
    queue.finish()


def run_wgsl(kernels: list[Kernel], arrays: dict[str, np.ndarray], sizes: dict[str, int], device, wgpu) -> None:
    """Launch each kernel through wgpu (lavapipe here); ``arrays`` are updated in place."""
    usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST

    def padded(a: np.ndarray) -> bytes:
        data = np.ascontiguousarray(a).tobytes()
        return data + b"\0" * (-len(data) % 4)

    bufs = {name: device.create_buffer_with_data(data=padded(a), usage=usage) for name, a in arrays.items()}
    for k in kernels:
        assert k.grid[2] == 1 and k.grid[0] < 65536, "packed x grids are not exercised here"
        words = [np.array(sizes[n]).astype(np.int32 if dt.startswith("int") else np.uint32).view(np.uint32)
                 for n, dt in k.scalars]
        pod = np.array([*words, k.grid[0]], dtype=np.uint32)
        uniform = device.create_buffer_with_data(data=pod.tobytes(), usage=wgpu.BufferUsage.UNIFORM)
        entry = re.search(r"@compute[^\n]*\nfn (\w+)\(", k.source)[1]
        assert re.search(r"@workgroup_size\((\d+), (\d+), (\d+)\)", k.source).groups() == tuple(map(str, k.block))
        module = device.create_shader_module(code=k.source)
        pipeline = device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": entry})
        entries = [{"binding": i, "resource": {"buffer": bufs[b], "offset": 0, "size": bufs[b].size}}
                   for i, b in enumerate(k.buffers)]
        entries.append({"binding": len(k.buffers), "resource": {"buffer": uniform, "offset": 0, "size": uniform.size}})
        group = device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
        encoder = device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, group)
        compute.dispatch_workgroups(*k.grid)
        compute.end()
        device.queue.submit([encoder.finish()])
    for name, buf in bufs.items():
        data = device.queue.read_buffer(buf)
        out = arrays[name]
        out[...] = np.frombuffer(data[:out.nbytes], dtype=out.dtype).reshape(out.shape)
