"""Calibration: quantize a model's decoder linears and write the fused checkpoint.

Each method is a module that registers one function with :func:`lowbit.calib.methods.register`.
"""

from lowbit.calib import (  # noqa: F401  (register the methods)
    awq_clip,
    bitdistiller,
    gptq,
    omniquant,
    rtn,
    smoothquant,
)
from lowbit.calib.calibrate import CalibrateArgs, calibrate
from lowbit.calib.methods import METHODS

__all__ = ["METHODS", "CalibrateArgs", "calibrate"]
