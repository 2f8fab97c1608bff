"""Constrained decoding on the compiled tiny random Llama: whatever it samples follows the schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from lowbit.runtime.batching import BatchEngine, Delta, Done, Request
from lowbit.runtime.engine import Engine, GenerationConfig
from lowbit.runtime.grammar import GrammarError
from lowbit.runtime.sampler import SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def batch(tiny_chat):
    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib, max_batch_size=8)
    yield BatchEngine(engine, 4).start()


def _texts(batch: BatchEngine, request: Request) -> tuple[list[str], list[str]]:
    texts, reasons = [""] * request.n, [""] * request.n
    for ev in batch.stream(request):
        if isinstance(ev, Delta):
            texts[ev.index] += ev.text
            reasons[ev.index] = ev.finish_reason or reasons[ev.index]
        else:
            assert isinstance(ev, Done), ev
    return texts, reasons


def test_random_model_output_follows_the_schema(batch):
    """A random model never writes JSON by itself; under the grammar every sample validates and
    ends by itself (once the object is complete only the stop token is allowed)."""
    e = batch.engine
    grammar = e.grammars.json_schema(SCHEMA)
    stops = e.default_stop_token_ids()
    ids = e.tokenizer.encode("Describe a person:")
    for seed in range(3):
        config = GenerationConfig(200, SamplingParams(temperature=1.0, seed=seed), (), stops, grammar)
        texts, reasons = _texts(batch, Request(ids, config, n=2))
        for text, reason in zip(texts, reasons, strict=True):
            jsonschema.validate(json.loads(text), SCHEMA)
            assert reason == "stop", (text, reason)
    free, _ = _texts(batch, Request(ids, GenerationConfig(30, SamplingParams(temperature=1.0, seed=0))))
    with pytest.raises(json.JSONDecodeError):
        json.loads(free[0])


def test_any_json_object(batch):
    e = batch.engine
    config = GenerationConfig(120, SamplingParams(temperature=1.0, seed=3), (), e.default_stop_token_ids(),
                              e.grammars.json_schema(None))
    texts, reasons = _texts(batch, Request(e.tokenizer.encode("{"), config))
    if reasons[0] == "stop":  # a free-form object may also run out of tokens
        assert isinstance(json.loads(texts[0]), dict)
    else:
        assert texts[0].startswith("{")


@pytest.mark.parametrize("schema", [{"type": "objectx"}, {"type": "integer", "minimum": "low"},
                                    {"$ref": "#/definitions/missing"}])
def test_invalid_schemas_are_one_line_errors(batch, schema):
    with pytest.raises(GrammarError) as e:
        batch.engine.grammars.json_schema(schema)
    assert "\n" not in str(e.value)
