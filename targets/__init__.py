"""Compilation targets (presets as data)."""

from lowbit.targets.presets import PRESETS, Preset, detect_isa, get_preset

__all__ = ["PRESETS", "Preset", "detect_isa", "get_preset"]
