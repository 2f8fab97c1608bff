"""``lowbit-package.json``: which models an app ships, with MLC's ``mlc-package-config.json`` fields.

```json
{"device": "iphone",
 "model_list": [{"model": "out/smollm2-q4f16_1-mlc", "model_id": "smollm2-q4f16_1",
                 "estimated_vram_bytes": 400000000, "bundle_weight": true,
                 "overrides": {"context_window_size": 2048, "prefill_chunk_size": 256}}]}
```
``model`` is an MLC folder (``lowbit convert``), relative to the config file. Unlike MLC there is
no hub to download from, so ``HF://`` and URLs are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.artifact import read_json
from lowbit.compiler.compile import OVERRIDES
from lowbit.errors import LowbitError

DEVICES = ("android", "iphone")
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a folder name on the phone
CONFIG_KEYS = {"device", "model_list"}
ENTRY_KEYS = {"model", "model_id", "estimated_vram_bytes", "bundle_weight", "overrides"}


@dataclass(frozen=True)
class ModelEntry:
    """One model of the app."""

    model: Path  # the MLC folder
    model_id: str
    estimated_vram_bytes: int
    bundle_weight: bool = False
    overrides: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PackageConfig:
    device: str
    models: tuple[ModelEntry, ...]


def _unknown_keys(got: dict, allowed: set[str], where: str) -> None:
    if extra := sorted(set(got) - allowed):
        raise LowbitError(f"{where}: unknown field {extra[0]!r} (fields: {', '.join(sorted(allowed))})")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _entry(raw: Any, index: int, base: Path, path: Path) -> ModelEntry:
    where = f"{path}: model_list[{index}]"
    if not isinstance(raw, dict):
        raise LowbitError(f"{where} is not an object")
    _unknown_keys(raw, ENTRY_KEYS, where)
    for key in ("model", "model_id", "estimated_vram_bytes"):
        if key not in raw:
            raise LowbitError(f"{where} has no {key!r}")
    model, model_id = raw["model"], raw["model_id"]
    if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id):
        raise LowbitError(f"{where}: model_id {model_id!r} must be letters, digits, '.', '_' or '-' "
                          "(it names the model's folder in the app)")
    where = f"{path}: model {model_id!r}"
    if not isinstance(model, str) or not model:
        raise LowbitError(f"{where}: 'model' must be the path of an MLC folder")
    if model.startswith(("HF://", "http://", "https://")):
        raise LowbitError(f"{where}: {model} is a hub address; lowbit downloads nothing — "
                          "convert the model with `lowbit convert` and give the MLC folder")
    if not _is_count(raw["estimated_vram_bytes"]):
        raise LowbitError(f"{where}: estimated_vram_bytes must be a positive integer")
    bundle = raw.get("bundle_weight", False)
    if not isinstance(bundle, bool):
        raise LowbitError(f"{where}: bundle_weight must be true or false")
    overrides = raw.get("overrides", {})
    if not isinstance(overrides, dict):
        raise LowbitError(f"{where}: overrides must be an object")
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise LowbitError(f"{where}: override {key!r} is not supported (supported: {', '.join(OVERRIDES)})")
        if not _is_count(value):
            raise LowbitError(f"{where}: override {key} must be a positive integer")
    return ModelEntry((base / model).resolve(), model_id, raw["estimated_vram_bytes"], bundle, dict(overrides))


def read_package_config(path: Path) -> PackageConfig:
    """The config at ``path``, checked: one line naming the field and the model at fault."""
    raw = read_json(path, "package config")
    if not isinstance(raw, dict):
        raise LowbitError(f"{path} is not a JSON object")
    _unknown_keys(raw, CONFIG_KEYS, str(path))
    device = raw.get("device")
    if device not in DEVICES:
        raise LowbitError(f"{path}: device must be one of {', '.join(DEVICES)} (got {device!r})")
    entries = raw.get("model_list")
    if not isinstance(entries, list) or not entries:
        raise LowbitError(f"{path}: model_list must be a non-empty list")
    models = tuple(_entry(e, i, Path(path).resolve().parent, Path(path)) for i, e in enumerate(entries))
    ids = [m.model_id for m in models]
    if dup := next((i for i in ids if ids.count(i) > 1), None):
        raise LowbitError(f"{path}: model_id {dup!r} appears twice")
    return PackageConfig(device, models)
