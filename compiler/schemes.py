"""MLC-LLM quantization schemes as data: storage layout, group size, dtypes, bits per weight.

Symmetric schemes copy mlc-llm's ``quantization/quantization.py`` (``GroupQuantize`` with
``linear_weight_layout="NK"``, ``storage_dtype="uint32"``, ``quantize_embedding`` and
``quantize_final_fc`` true). Asymmetric ``w{b}a16g{G}asym`` schemes (the OmniQuant authors'
names) hold calibrated integer codes and zero points without loss; ``nf3a16g{G}`` schemes hold
BitDistiller's NF3 codebook codes and their two scales per group. ``docs/FORMAT.md`` draws every
layout bit by bit.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import LowbitError
from lowbit.quantizer import QuantSpec

STORAGE_BITS = 32  # every packed scheme stores uint32 words


@dataclass(frozen=True)
class NoQuant:
    """``q0f16`` / ``q0f32``: every parameter in the model dtype."""

    name: str
    model_dtype: str

    @property
    def quantize_embedding(self) -> bool:
        return False

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
    def quantize_embedding(self) -> bool:
        return True

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
    lm_head stay fp16 (as OmniQuant's MLC fork).
    """

    name: str
    bits: int
    group_size: int
    model_dtype: str = "float16"

    @property
    def quantize_embedding(self) -> bool:
        return False

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
    ``s₋`` per group; no zero point. Embedding and lm_head stay fp16.
    """

    name: str
    group_size: int
    model_dtype: str = "float16"

    @property
    def bits(self) -> int:
        return 3

    @property
    def quantize_embedding(self) -> bool:
        return False

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


def _registry() -> dict[str, Scheme]:
    schemes: list[Scheme] = [
        NoQuant("q0f16", "float16"),
        NoQuant("q0f32", "float32"),
        SymGroupQuant("q4f16_1", 4, 32, "float16"),
        SymGroupQuant("q4f32_1", 4, 32, "float32"),
        SymGroupQuant("q3f16_1", 3, 40, "float16"),
    ]
    for bits in (4, 3, 2):
        for group in (128, 64, 32):
            schemes.append(AsymGroupQuant(f"w{bits}a16g{group}asym", bits, group))
    for group in (128, 64):
        schemes.append(NF3GroupQuant(f"nf3a16g{group}", group))
    return {s.name: s for s in schemes}


SCHEMES: dict[str, Scheme] = _registry()


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name``, or a one-line error listing the known ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise LowbitError(f"unknown scheme {name!r} (available: {', '.join(SCHEMES)})") from None
