"""MLC-LLM quantization schemes as data: storage layout, group size, dtypes, bits per weight.

Symmetric schemes copy mlc-llm's ``quantization/quantization.py`` (``GroupQuantize`` with
``linear_weight_layout="NK"``, ``storage_dtype="uint32"``, ``quantize_embedding`` and
``quantize_final_fc`` true). Asymmetric ``w{b}a16g{G}asym`` schemes (the OmniQuant authors'
names) hold calibrated integer codes and zero points without loss; ``nf3a16g{G}`` schemes hold
BitDistiller's NF3 codebook codes and their two scales per group. Their embedding and lm_head stay
fp16, or (``…_q8head``) take :data:`HEAD_Q8`, 8-bit codes per 32 with fp16 scales: half the bytes
of the fp16 head that a small model's decode step otherwise mostly reads. ``docs/FORMAT.md``
draws every layout bit by bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lowbit.errors import LowbitError
from lowbit.quantizer import QuantSpec

STORAGE_BITS = 32  # every packed scheme stores uint32 words


@dataclass(frozen=True)
class NoQuant:
    """``q0f16`` / ``q0f32``: every parameter in the model dtype."""

    name: str
    model_dtype: str

    @property
    def edge(self) -> Scheme:
        """The scheme of the embedding and lm_head."""
        return self

    def bits_per_weight(self) -> float:
        return 16.0 if self.model_dtype == "float16" else 32.0


@dataclass(frozen=True)
class SymGroupQuant:
    """MLC's ``GroupQuantize`` (NK layout): ``w ≈ (q − m)·s``, ``m = 2^(b−1) − 1``.

    ``q_weight`` uint32 [N, ceil(K/G)·G/E] holds ``E = 32 // b`` codes per word, element j of a
    word at bits ``b·j`` (low first), consecutive along K; codes past K are 0.
    ``q_scale`` [N, ceil(K/G)] in the model dtype.
    """

    name: str
    bits: int
    group_size: int
    model_dtype: str

    @property
    def edge(self) -> Scheme:
        """MLC's ``quantize_embedding`` and ``quantize_final_fc``: the body's scheme."""
        return self

    @property
    def elems_per_word(self) -> int:
        return STORAGE_BITS // self.bits

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, sym=True)

    def num_groups(self, k: int) -> int:
        return -(-k // self.group_size)

    def words_per_row(self, k: int) -> int:
        return self.num_groups(k) * self.group_size // self.elems_per_word

    def bits_per_weight(self) -> float:
        scale_bits = 16 if self.model_dtype == "float16" else 32
        return STORAGE_BITS / self.elems_per_word + scale_bits / self.group_size


@dataclass(frozen=True)
class AsymGroupQuant:
    """``w ≈ (q − z)·s`` with fp16 scales and uint8 zero points, groups along K.

    ``q_weight`` uint32 [N, ceil(K/G)·G·b/32]: each run of 32 elements along K takes b words
    (bit-plane for b = 3); ``q_scale`` fp16 and ``q_zero`` uint8 [N, ceil(K/G)]. Embedding and
    lm_head stay fp16 (as OmniQuant's MLC fork), or are stored in ``head``.
    """

    name: str
    bits: int
    group_size: int
    model_dtype: str = "float16"
    head: SymGroupQuant | None = None

    @property
    def edge(self) -> Scheme:
        """The scheme of the embedding and lm_head: ``head``, else unquantized fp16."""
        return self.head or NoQuant("q0f16", self.model_dtype)

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, sym=False)

    def num_groups(self, k: int) -> int:
        return -(-k // self.group_size)

    def words_per_row(self, k: int) -> int:
        return self.num_groups(k) * self.group_size * self.bits // STORAGE_BITS

    def bits_per_weight(self) -> float:
        return self.bits + (16 + 8) / self.group_size


@dataclass(frozen=True)
class NF3GroupQuant:
    """``w ≈ NF3_LEVELS[q]·s₊`` (q > 3) or ``NF3_LEVELS[q]·s₋``: BitDistiller's NF3 codebook.

    ``q_weight`` uint32 [N, ceil(K/G)·G·3/32] packs the 3-bit codes as the 3-bit asymmetric
    schemes do (bit planes per run of 32); ``q_scale`` fp16 [N, ceil(K/G), 2] holds ``s₊`` then
    ``s₋`` per group; no zero point. Embedding and lm_head stay fp16, or are stored in ``head``.
    """

    name: str
    group_size: int
    model_dtype: str = "float16"
    head: SymGroupQuant | None = None

    @property
    def bits(self) -> int:
        return 3

    @property
    def edge(self) -> Scheme:
        """The scheme of the embedding and lm_head: ``head``, else unquantized fp16."""
        return self.head or NoQuant("q0f16", self.model_dtype)

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, codebook="nf3")

    def num_groups(self, k: int) -> int:
        return -(-k // self.group_size)

    def words_per_row(self, k: int) -> int:
        return self.num_groups(k) * self.group_size * self.bits // STORAGE_BITS

    def bits_per_weight(self) -> float:
        return self.bits + 2 * 16 / self.group_size


Scheme = NoQuant | SymGroupQuant | AsymGroupQuant | NF3GroupQuant
PackedScheme = SymGroupQuant | AsymGroupQuant | NF3GroupQuant

# The ``…_q8head`` schemes' embedding and lm_head: w ≈ (q − 127)·s per 32 along K, the grid of
# llama.cpp's Q8_0 (so a Q8_0 embedding, as in the bundled GGUF, goes in without loss).
HEAD_Q8 = SymGroupQuant("q8f16_g32", 8, 32, "float16")
HEAD_SUFFIX = "_q8head"


def param_scheme(scheme: Scheme, name: str, kind: str) -> Scheme:
    """The scheme one MLC parameter is stored in: the embedding and lm_head take ``scheme.edge``."""
    return scheme.edge if kind == "embedding" or name == "lm_head" else scheme


def _registry() -> dict[str, Scheme]:
    schemes: list[Scheme] = [
        NoQuant("q0f16", "float16"),
        NoQuant("q0f32", "float32"),
        SymGroupQuant("q4f16_1", 4, 32, "float16"),
        SymGroupQuant("q4f32_1", 4, 32, "float32"),
        SymGroupQuant("q3f16_1", 3, 40, "float16"),
    ]
    fp16_head: list[AsymGroupQuant | NF3GroupQuant] = []
    for bits in (4, 3, 2):
        for group in (128, 64, 32):
            fp16_head.append(AsymGroupQuant(f"w{bits}a16g{group}asym", bits, group))
    for group in (128, 64):
        fp16_head.append(NF3GroupQuant(f"nf3a16g{group}", group))
    for s in fp16_head:
        schemes += [s, replace(s, name=s.name + HEAD_SUFFIX, head=HEAD_Q8)]
    return {s.name: s for s in schemes}


SCHEMES: dict[str, Scheme] = _registry()


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name``, or a one-line error listing the known ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise LowbitError(f"unknown scheme {name!r} (available: {', '.join(SCHEMES)})") from None
