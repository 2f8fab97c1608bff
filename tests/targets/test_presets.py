"""Target presets: host ISA detection from CPU flags, lookup errors, a buildable TVM target."""

from __future__ import annotations

import pytest

from lowbit.errors import LowbitError
from lowbit.targets import PRESETS, detect_isa, get_preset
from lowbit.targets.presets import LLVM_ISA, cpu_flags


@pytest.mark.parametrize(
    ("flags", "machine", "isa"),
    [
        ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, "x86_64", "avx512"),
        ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}, "x86_64",
         "avx512vnni"),
        ({"avx2", "fma", "avx512_vnni"}, "x86_64", "avx2"),  # VNNI without x86-64-v4: unused
        ({"avx2", "fma", "avx512f"}, "x86_64", "avx2"),  # AVX-512 foundation alone is not x86-64-v4
        ({"avx2", "fma", "sse4_2"}, "x86_64", "avx2"),
        ({"sse4_2"}, "x86_64", "generic"),
        ({"avx2", "fma"}, "aarch64", "generic"),
    ],
)
def test_detect_isa(flags, machine, isa):
    assert detect_isa(flags, machine) == isa


def test_cpu_flags_parses_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_unknown_target_is_one_line_error():
    with pytest.raises(LowbitError, match="unknown target 'rocm'.*llvm"):
        get_preset("rocm")


def test_llvm_preset_builds_a_tvm_target():
    preset = PRESETS["llvm"]
    target = preset.tvm_target()
    assert target.kind.name == "llvm"
    assert preset.formats[0].suffix == ".so"
    assert preset.target(None) in LLVM_ISA.values()
