"""The MLC artifact contract: file names, readers and the compiled library's metadata.

An MLC model is a weight folder (``mlc-chat-config.json``, ``tensor-cache.json``,
``params_shard_*.bin``, tokenizer files) plus a model library built for one target. Convert
writes the folder, compile writes the library, and the runtime, the server and the app packager
read both through this module. It imports neither torch nor the TVM compiler.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowbit.errors import LowbitError

if TYPE_CHECKING:  # numpy is imported where arrays are read: the CLI imports this module at start-up
    import numpy as np

CHAT_CONFIG = "mlc-chat-config.json"
TENSOR_CACHE = "tensor-cache.json"
METADATA_FUNC = "_metadata"  # every library lowbit compiles returns its metadata JSON here
METADATA_FORMAT = 2
STATIC_METADATA_SUFFIX = ".metadata.json"  # beside a static (system-lib) library, which cannot be loaded alone
CHAT_CONFIG_KEYS = ("model_type", "quantization", "model_config")


LIBRARY_CHECKSUM_SUFFIX = ".sha256"  # <library>.sha256 beside it, in `sha256sum` format


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``, or one :class:`LowbitError` line naming the file and the fault."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LowbitError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise LowbitError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise LowbitError(f"{path} is not a valid {what} (not UTF-8 at byte {e.start})") from None


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``, or one :class:`LowbitError` line naming the file and the fault."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LowbitError(f"{path} is not a valid {what} (bad JSON: {e})") from None


def read_chat_config(folder: Path) -> dict:
    """``mlc-chat-config.json`` of an MLC folder, with the keys every stage needs checked."""
    path = Path(folder) / CHAT_CONFIG
    if not path.is_file():
        raise LowbitError(f"{folder} is not an MLC model folder (no {CHAT_CONFIG})")
    chat = read_json(path, "chat config")
    if not isinstance(chat, dict):
        raise LowbitError(f"{path} is not a JSON object")
    for key in CHAT_CONFIG_KEYS:
        if key not in chat:
            raise LowbitError(f"{path} has no {key!r}")
    if not isinstance(chat["model_config"], dict):
        raise LowbitError(f"{path}: 'model_config' is not an object")
    return chat


# -- tensor-cache.json ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamRecord:
    """One tensor of the cache: where it lives and what it is."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str  # "raw" or "f32-to-bf16"
    shard: str
    offset: int
    nbytes: int


@dataclass
class TensorCache:
    """The parsed ``tensor-cache.json`` of an MLC folder."""

    folder: Path
    records: dict[str, ParamRecord]  # in file order
    shards: list[dict]
    metadata: dict


def read_tensor_cache_index(folder: Path) -> TensorCache:
    """Parse ``tensor-cache.json`` (no shard is read)."""
    folder = Path(folder)
    path = folder / TENSOR_CACHE
    if not path.is_file():
        raise LowbitError(f"{folder} is not an MLC weight folder (no {TENSOR_CACHE})")
    info = read_json(path, "tensor cache index")
    try:
        records = {}
        for shard in info["records"]:
            _check_shard(shard)
            for r in shard["records"]:
                rec = ParamRecord(r["name"], tuple(r["shape"]), r["dtype"], r.get("format", "raw"),
                                  shard["dataPath"], r["byteOffset"], r["nbytes"])
                _check_record(rec, shard["nbytes"])
                records[rec.name] = rec
        metadata = info.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("'metadata' is not an object")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise LowbitError(f"{path} is not a valid tensor cache index ({type(e).__name__}: {e})") from None
    return TensorCache(folder, records, info["records"], metadata)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shard(shard: dict) -> None:
    if not isinstance(shard.get("dataPath"), str) or "/" in shard["dataPath"] or not _is_count(shard.get("nbytes")):
        raise ValueError(f"shard entry {str(shard)[:80]} needs a file name 'dataPath' and a byte count 'nbytes'")


def _check_record(rec: ParamRecord, shard_bytes: int) -> None:
    """A record's fields have their types and its bytes fit its shape, dtype and shard."""
    if not isinstance(rec.name, str) or not all(_is_count(d) for d in rec.shape):
        raise ValueError(f"record {rec.name!r} has a bad name or shape {list(rec.shape)}")
    if not (_is_count(rec.offset) and _is_count(rec.nbytes) and rec.offset + rec.nbytes <= shard_bytes):
        raise ValueError(f"record {rec.name} lies outside its shard ({rec.offset}+{rec.nbytes} > {shard_bytes})")
    import numpy as np

    bf16 = rec.dtype == "bfloat16" or (rec.encoding == "f32-to-bf16" and rec.dtype == "float32")
    itemsize = 2 if bf16 else np.dtype(rec.dtype).itemsize
    if rec.nbytes != int(np.prod(rec.shape, dtype=np.int64)) * itemsize:
        raise ValueError(f"record {rec.name}: {rec.nbytes} bytes do not fit {rec.dtype}{list(rec.shape)}")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_shards(cache: TensorCache, check_md5: bool = True) -> None:
    """Every shard exists with the recorded size (and md5), and ``tokenizer.json`` matches the
    sha256 lowbit's convert recorded, else a one-line :class:`LowbitError`."""
    ours = cache.metadata.get("lowbit")
    want = ours.get("tokenizer_sha256") if isinstance(ours, dict) else None
    if check_md5 and isinstance(want, str):
        path = cache.folder / "tokenizer.json"
        if not path.is_file():
            raise LowbitError(f"{cache.folder} lacks the tokenizer.json its {TENSOR_CACHE} records")
        if sha256_file(path) != want:
            raise LowbitError(f"{path} does not match the sha256 in {TENSOR_CACHE} (edited or corrupted)")
    for shard in cache.shards:
        path = cache.folder / shard["dataPath"]
        if not path.is_file():
            raise LowbitError(f"missing weight shard {path}")
        size = path.stat().st_size
        if size != shard["nbytes"]:
            raise LowbitError(f"weight shard {path} has {size} bytes, expected {shard['nbytes']} (truncated?)")
        if check_md5 and "md5sum" in shard and _md5(path) != shard["md5sum"]:
            raise LowbitError(f"weight shard {path} fails its md5 check (corrupted)")


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    import numpy as np

    return (raw.astype(np.uint32) << 16).view(np.float32)


def record_array(rec: ParamRecord, shard: np.ndarray) -> np.ndarray:
    """The record's data from its shard's bytes (uint8): a view when no decoding is needed."""
    import numpy as np

    buf = shard[rec.offset : rec.offset + rec.nbytes]
    if rec.dtype == "bfloat16" or (rec.encoding == "f32-to-bf16" and rec.dtype == "float32"):
        return _bf16_to_f32(buf.view(np.uint16)).reshape(rec.shape)
    return buf.view(np.dtype(rec.dtype)).reshape(rec.shape)


# -- the library's metadata ----------------------------------------------------------------------
# lowbit compile --decode-activations: int8 runs the one-token matmuls of the 4-, 3- and 2-bit
# schemes on 8-bit activations, int8x2 on two int8 codes per activation (compiler/kernels/gemv_int8.py)
INT8_CODES = {"fp": 0, "int8": 1, "int8x2": 2}  # int8 codes per activation, by kind
DECODE_ACTIVATIONS = tuple(INT8_CODES)
# lowbit compile --prefill-activations: int8 runs prefill's matmuls as int8 GEMMs (gemm_int8.py)
PREFILL_ACTIVATIONS = ("fp", "int8")
# lowbit compile --kv-cache-dtype: the paged KV cache's storage (CPU targets; default: compute dtype)
KV_CACHE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class LibraryMetadata:
    """What a compiled library is for; ``lowbit compile`` stores it as JSON in ``_metadata``.

    ``device`` is the TVM runtime device the library's kernels run on (``cpu``, ``cuda``,
    ``metal``, ``opencl``, ``webgpu``); ``params`` lists every weight the library takes, in
    argument order, as ``{"name", "shape", "dtype"}`` (a negative or symbolic dimension matches
    any size). This schema is lowbit's own: MLC-LLM's runtime does not read it.
    """

    model_type: str
    quantization: str
    target: str  # the lowbit target preset (llvm, cuda, iphone, …)
    device: str
    compute_dtype: str
    context_window_size: int
    prefill_chunk_size: int
    config: dict = field(default_factory=dict)
    params: list[dict] = field(default_factory=list)
    tvm_target: str = ""
    system_lib_prefix: str = ""  # static (system-lib) builds: the prefix of every symbol
    decode_activations: str = "fp"  # one of DECODE_ACTIVATIONS
    kv_cache_dtype: str = ""  # one of KV_CACHE_DTYPES; "" (libraries before the option): compute_dtype
    format: int = METADATA_FORMAT

    @property
    def kv_dtype(self) -> str:
        """The KV cache's storage dtype."""
        return self.kv_cache_dtype or self.compute_dtype

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LibraryMetadata:
        """Parse the JSON; libraries of format 1 (CPU only, before targets) still load."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("the metadata is not a JSON object")
        fmt = int(raw.get("format", 1))
        if fmt > METADATA_FORMAT:
            raise LowbitError(f"model library metadata format {fmt} is newer than this lowbit "
                              f"understands ({METADATA_FORMAT}): upgrade lowbit")
        if fmt == 1:
            raw = {**raw, "tvm_target": raw.get("target", ""), "target": "llvm", "device": "cpu"}
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def param_names(self, cache: TensorCache, library: str) -> list[str]:
        """The library's parameter names, after checking the folder's weights fit them."""
        for p in self.params:
            rec = cache.records.get(p["name"])
            if rec is None:
                raise LowbitError(f"model library {library} needs weight {p['name']}, which "
                                  f"{cache.folder} lacks (wrong library for this folder?)")
            want = tuple(p["shape"])
            fits = len(want) == len(rec.shape) and all(
                not isinstance(w, int) or w < 0 or w == h for w, h in zip(want, rec.shape, strict=True))
            if not fits or p["dtype"] != rec.dtype:
                raise LowbitError(f"model library {library} expects {p['name']} as {p['dtype']}{list(want)}, "
                                  f"{cache.folder} has {rec.dtype}{list(rec.shape)} (wrong library for this folder?)")
        return [p["name"] for p in self.params]

    def check_chat_config(self, chat: dict, library: str, folder: Path) -> None:
        """Refuse a folder whose model type or scheme differs from the library's."""
        for key in ("model_type", "quantization"):
            if getattr(self, key) != chat.get(key):
                raise LowbitError(f"model library {library} is for {key} {getattr(self, key)!r} but "
                                  f"{folder} has {chat.get(key)!r}")


def static_metadata_path(library: Path) -> Path:
    """Where ``lowbit compile`` writes a static library's metadata (its ``system_lib_prefix``
    above all: a program that links the archive loads the model as ``system://PREFIX``)."""
    return Path(f"{library}{STATIC_METADATA_SUFFIX}")


def system_lib_prefix(model_type: str, quantization: str, metadata_json: str) -> str:
    """MLC's static-library prefix, ``<model_type>_<quantization>_<hash>_``, the hash over the
    library's metadata (config, target, parameters): two different models linked into one app
    never share a symbol, and the same model built again keeps its prefix."""
    digest = hashlib.sha256(metadata_json.encode()).hexdigest()[:8]
    clean = "".join(c if c.isalnum() else "_" for c in f"{model_type}_{quantization}")
    return f"{clean}_{digest}_"


# -- the library's checksum ----------------------------------------------------------------------
def library_checksum_path(library: Path) -> Path:
    """Where ``lowbit compile`` records the library's sha256: ``<library>.sha256`` beside it."""
    library = Path(library)
    return library.with_name(library.name + LIBRARY_CHECKSUM_SUFFIX)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checksum_line(library: Path, name: str) -> str:
    """The ``sha256sum`` line for the file ``library``, recorded under the file name ``name``."""
    return f"{sha256_file(library)}  {name}\n"


def verify_library(library: Path) -> None:
    """Check the library against its recorded sha256 when there is one (libraries built before
    checksums, or by other tools, have none), so a truncated or altered library is refused
    before the loader maps it."""
    library = Path(library)
    record = library_checksum_path(library)
    if not record.is_file():
        _check_elf_extent(library)
        return
    try:
        want = record.read_text().split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        raise LowbitError(f"cannot read the checksum {record} of model library {library}") from None
    if sha256_file(library) != want:
        raise LowbitError(f"model library {library} does not match its sha256 in {record.name} "
                          "(truncated or corrupted): rebuild it with lowbit compile")


def _check_elf_extent(library: Path) -> None:
    """For a library without a checksum: a 64-bit little-endian ELF file (a ``.so`` on Linux) must
    hold every segment and section its header lists, else it was truncated (mapping it would end
    the process with SIGBUS). Other formats are left to the loader."""
    size = library.stat().st_size
    with library.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
            return
        phoff, shoff = struct.unpack_from("<QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 54)
        ends = [phoff + phentsize * phnum, shoff + shentsize * shnum]
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(len(table) // phentsize if phentsize >= 56 else 0):  # Elf64_Phdr
            (offset,) = struct.unpack_from("<Q", table, i * phentsize + 8)
            (filesz,) = struct.unpack_from("<Q", table, i * phentsize + 32)
            ends.append(offset + filesz)
    if max(ends) > size:
        raise LowbitError(f"model library {library} is truncated ({size} bytes, its ELF header "
                          f"lists data up to byte {max(ends)})")
