"""``lowbit package``: every model of ``lowbit-package.json`` compiled for the device, linked into
one static archive (with the engine where the device's apps link it prebuilt), plus the app config
and the bundled weights. The layout, which ``apps/android`` and ``apps/ios`` read:

```
dist/
  lib/libmodel_<device>.a       every model's prefixed objects (iphone: and the engine's C API)
  lib/lowbit-libs.json          what the archive holds: each model's prefix and library metadata
  include/lowbit/engine.h       (iphone) the C API the archive implements
  bundle/lowbit-app-config.json model_id, model_lib ("system://PREFIX"), estimated_vram_bytes,
                                model_path (bundled weights only)
  bundle/<model_id>/            the MLC folder, where bundle_weight is true
```
Everything is checked (:func:`verify_package`) before the folder appears; a mismatch is one line
naming the model, and nothing is written.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from lowbit.artifact import (
    CHAT_CONFIG,
    METADATA_FORMAT,
    TENSOR_CACHE,
    LibraryMetadata,
    read_chat_config,
    read_json,
    read_tensor_cache_index,
    static_metadata_path,
    verify_shards,
)
from lowbit.cache import atomic_dir
from lowbit.compiler.chat_config import TOKENIZER_FILES
from lowbit.compiler.compile import CompileArgs, apply_overrides, compile_model
from lowbit.errors import LowbitError
from lowbit.packager.archive import library_bin_symbol, merge_archives, read_definitions
from lowbit.packager.config import ModelEntry, read_package_config
from lowbit.packager.engine import build_engine, native_source
from lowbit.targets.presets import Preset, get_preset
from lowbit.targets.tools import CMAKE, LLVM_NM

APP_CONFIG = "bundle/lowbit-app-config.json"
LIBS_MANIFEST = "lib/lowbit-libs.json"
ENGINE_HEADER = "include/lowbit/engine.h"
ENGINE_SYMBOLS = ("lowbit_engine_create", "lowbit_engine_chat_completion", "lowbit_engine_completion",
                  "lowbit_engine_abort", "lowbit_engine_reset", "lowbit_engine_free", "lowbit_last_error")
EXTRA_FILES = ("chat_template.jinja",)  # beside TOKENIZER_FILES, where the folder has it


@dataclass(frozen=True)
class Device:
    """How one device's package is laid out (its preset is the `lowbit compile` target of the same name)."""

    archive: str
    ar_format: str
    macho: bool

    @property
    def archive_path(self) -> str:
        return f"lib/{self.archive}"


DEVICES = {
    "android": Device("libmodel_android.a", "gnu", macho=False),
    "iphone": Device("libmodel_iphone.a", "darwin", macho=True),
}


def _check_tools(preset: Preset, device: Device) -> None:
    preset.library_format(Path(device.archive)).check_tools()
    LLVM_NM.command()
    if preset.app_cxx:
        native_source()
        CMAKE.command()
        preset.app_cxx.command()


def _check_folder(entry: ModelEntry) -> dict:
    """The model's chat config, after checking its weights are whole (all of them when bundled)."""
    chat = read_chat_config(entry.model)
    verify_shards(read_tensor_cache_index(entry.model), check_md5=entry.bundle_weight)
    return chat


def _compile(entry: ModelEntry, preset: Preset, build: Path, progress: bool) -> LibraryMetadata:
    out = build / f"{entry.model_id}.a"
    compile_model(CompileArgs(entry.model, preset.name, out, overrides=entry.overrides), progress=progress)
    return LibraryMetadata.from_json(static_metadata_path(out).read_text())


def _bundle(entry: ModelEntry, chat: dict, dest: Path) -> None:
    """The MLC folder's files (chat config with the overrides, tensor cache, shards, tokenizer)."""
    dest.mkdir(parents=True)
    cache = read_tensor_cache_index(entry.model)
    names = [TENSOR_CACHE, *(s["dataPath"] for s in cache.shards), *TOKENIZER_FILES, *EXTRA_FILES]
    for name in dict.fromkeys(names):
        if (entry.model / name).is_file():
            shutil.copy2(entry.model / name, dest / name)
    (dest / CHAT_CONFIG).write_text(json.dumps(apply_overrides(chat, entry.overrides), indent=2))


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def package(config_path: Path, out: Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Build ``out`` from the package config at ``config_path``; returns ``out``."""
    config = read_package_config(config_path)
    device = DEVICES[config.device]
    preset = get_preset(config.device)
    chats = {e.model_id: _check_folder(e) for e in config.models}
    _check_tools(preset, device)
    with atomic_dir(out, overwrite) as stage:
        build = stage / ".build"
        build.mkdir()
        libs, archives = [], {}
        for n, entry in enumerate(config.models, 1):
            if progress:
                print(f"package: [{n}/{len(config.models)}] {entry.model_id}: compile for {config.device}",
                      file=sys.stderr)
            metadata = _compile(entry, preset, build, progress)
            # the same folder and overrides twice give one prefix: link its objects once
            archives.setdefault(metadata.system_lib_prefix, build / f"{entry.model_id}.a")
            libs.append({"model_id": entry.model_id, "system_lib_prefix": metadata.system_lib_prefix,
                         "metadata": json.loads(metadata.to_json())})
        objects = list(archives.values())
        if preset.app_cxx:
            if progress:
                print(f"package: build the engine for {config.device}", file=sys.stderr)
            objects.append(build_engine(preset, device.ar_format))
            header = stage / ENGINE_HEADER
            header.parent.mkdir(parents=True)
            shutil.copy2(native_source() / ENGINE_HEADER, header)
        (stage / "lib").mkdir()
        merge_archives(objects, stage / device.archive_path, device.ar_format)
        app_models = []
        for entry, lib in zip(config.models, libs, strict=True):
            model = {"model_id": entry.model_id, "model_lib": f"system://{lib['system_lib_prefix']}",
                     "estimated_vram_bytes": entry.estimated_vram_bytes}
            if entry.bundle_weight:
                _bundle(entry, chats[entry.model_id], stage / "bundle" / entry.model_id)
                model["model_path"] = entry.model_id
            app_models.append(model)
        common = {"device": config.device, "metadata_format": METADATA_FORMAT}
        _write_json(stage / LIBS_MANIFEST, {**common, "engine": preset.app_cxx is not None, "models": libs})
        _write_json(stage / APP_CONFIG, {**common, "model_list": app_models})
        shutil.rmtree(build)
        verify_package(stage)
    return out


# -- the check, at the end of packaging and by `lowbit package --verify` ---------------------------
def _read_dict(path: Path, what: str) -> dict:
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise LowbitError(f"{path} is not a JSON object")
    return value


def _check_bundled(dist: Path, model_id: str, model_path: str, metadata: LibraryMetadata) -> None:
    folder = dist / "bundle" / model_path
    where = f"model {model_id!r}"
    if not (folder / CHAT_CONFIG).is_file():
        raise LowbitError(f"{where}: bundled folder {folder} is missing")
    chat = read_chat_config(folder)
    metadata.check_chat_config(chat, f"system://{metadata.system_lib_prefix}", folder)
    cache = read_tensor_cache_index(folder)
    metadata.param_names(cache, f"system://{metadata.system_lib_prefix}")
    verify_shards(cache)


def verify_package(dist: Path) -> None:
    """Library, weights and app config agree: every model the app config names is in the archive
    under its prefix, built for the metadata format this lowbit's engine reads, with bundled
    weights that fit it; no symbol is defined twice. Else one line naming the model."""
    dist = Path(dist)
    if not (dist / LIBS_MANIFEST).is_file():
        raise LowbitError(f"{dist} is not a lowbit package folder (no {LIBS_MANIFEST})")
    libs = _read_dict(dist / LIBS_MANIFEST, "library manifest")
    app = _read_dict(dist / APP_CONFIG, "app config")
    device = DEVICES.get(libs.get("device"))
    if device is None or app.get("device") != libs.get("device"):
        raise LowbitError(f"{dist}: app config is for device {app.get('device')!r}, libraries for {libs.get('device')!r}")
    for what, doc in (("app config", app), ("library manifest", libs)):
        if doc.get("metadata_format") != METADATA_FORMAT:
            raise LowbitError(f"{dist}: {what} has metadata format {doc.get('metadata_format')!r}; this lowbit's "
                              f"engine reads format {METADATA_FORMAT} (package again)")
    archive = dist / device.archive_path
    if not archive.is_file():
        raise LowbitError(f"{dist}: {device.archive_path} is missing")
    symbols = read_definitions(archive)
    defined = set(symbols.strong) | symbols.weak
    if dup := symbols.duplicates():
        name, members = next(iter(dup.items()))
        raise LowbitError(f"{archive}: symbol {name} is defined by {' and '.join(members)}")
    if libs.get("engine"):
        missing = [s for s in ENGINE_SYMBOLS if ("_" + s if device.macho else s) not in defined]
        if missing:
            raise LowbitError(f"{archive} lacks the engine's {missing[0]}")
    built = {m["system_lib_prefix"]: LibraryMetadata.from_json(json.dumps(m["metadata"])) for m in libs["models"]}
    for model in app.get("model_list", []):
        model_id, model_lib = model.get("model_id"), str(model.get("model_lib", ""))
        prefix = model_lib.removeprefix("system://")
        if not model_lib.startswith("system://") or prefix not in built:
            raise LowbitError(f"model {model_id!r}: model_lib {model_lib!r} is not among the packaged libraries "
                              f"({', '.join(built) or 'none'}); package again")
        if library_bin_symbol(prefix, device.macho) not in defined:
            raise LowbitError(f"model {model_id!r}: {archive.name} has no library with prefix {prefix} "
                              f"(it holds {', '.join(p for p in built if library_bin_symbol(p, device.macho) in defined) or 'none'})")
        if built[prefix].format != METADATA_FORMAT:
            raise LowbitError(f"model {model_id!r}: its library has metadata format {built[prefix].format}; "
                              f"the engine reads {METADATA_FORMAT}")
        if "model_path" in model:
            _check_bundled(dist, model_id, model["model_path"], built[prefix])
