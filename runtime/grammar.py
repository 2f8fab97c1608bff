"""Constrained decoding with llguidance: JSON schemas and tool-call formats as token masks.

A grammar is compiled once per request (:meth:`Grammars.json_schema`, :meth:`Grammars.lark`)
into llguidance's serialized form; each generated sequence then gets its own :class:`Constraint`,
which says which tokens may come next and follows the tokens sampled. When the grammar is
complete, only the stop tokens are allowed, so the sequence ends there.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lowbit.errors import LowbitError

# JSON without free whitespace between tokens: a small model cannot loop on blank lines.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(LowbitError):
    """A schema or grammar llguidance cannot compile (the client's mistake)."""


class Grammars:
    """Compiles grammars for one tokenizer; ``vocab_size``: the model's logits width."""

    def __init__(self, tokenizer_json: str, vocab_size: int, stop_token_ids: tuple[int, ...]):
        import llguidance

        self._llg = llguidance
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size,
                                                eos_token=list(stop_token_ids))

    def json_schema(self, schema: dict[str, Any] | None) -> str:
        """The grammar of JSON values valid under ``schema`` (None: any JSON object)."""
        schema = {"type": "object"} if schema is None else schema
        try:
            grammar = self._llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
        except ValueError as e:
            raise GrammarError(f"invalid JSON schema: {e}") from None
        return self._checked(grammar, "JSON schema")

    def lark(self, source: str) -> str:
        """The grammar of a Lark source (llguidance's dialect: ``%json {schema}`` embeds a schema)."""
        return self._checked(self._llg.LLMatcher.grammar_from_lark(source), "grammar")

    def _checked(self, grammar: str, what: str) -> str:
        error = self._llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise GrammarError(f"invalid {what}: {error.splitlines()[0]}")
        return grammar

    def constraint(self, grammar: str) -> Constraint:
        return Constraint(self._llg.LLMatcher(self.tokenizer, grammar, log_level=0), self.vocab_size)

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (special tokens: their text)."""
        return self.tokenizer.decode_bytes([int(token)])


class Constraint:
    """One sequence's position in a grammar."""

    def __init__(self, matcher, vocab_size: int):
        self._m, self.vocab_size = matcher, vocab_size

    def allowed(self) -> np.ndarray:
        """Boolean mask of the tokens the grammar allows next."""
        self._raise_if_broken()
        bits = np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.vocab_size].astype(bool)

    def accept(self, token: int) -> None:
        self._m.consume_token(int(token))
        self._raise_if_broken()

    def _raise_if_broken(self) -> None:
        if self._m.is_error():
            raise LowbitError(f"constrained decoding failed: {self._m.get_error()}")
