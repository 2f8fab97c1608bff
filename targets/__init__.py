"""Compilation targets: one preset record per target, the CPU and GPU backends, exporters, tools."""

from lowbit.targets.presets import PRESETS, BuildOptions, Preset, detect_isa, get_preset

__all__ = ["PRESETS", "BuildOptions", "Preset", "detect_isa", "get_preset"]
