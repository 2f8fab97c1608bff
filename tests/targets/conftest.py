"""The target tests' fixture: MLC folders of a one-layer model with the bundled model's shapes."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_mlc(tmp_path_factory):
    """scheme → MLC folder of a one-layer model with the bundled model's shapes (hidden 576, 9/3
    heads of 64, FFN 1536, vocabulary 49152: kernel limits such as GPU shared memory depend on
    them), random weights, converted once per scheme."""
    from tiny_models import save_tiny, tiny_llama_config

    from lowbit.compiler.convert import ConvertArgs, convert

    root = tmp_path_factory.mktemp("tiny_mlc")
    hf = save_tiny(root / "hf", tiny_llama_config(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=256))
    made: dict[str, Path] = {}

    def get(scheme: str) -> Path:
        if scheme not in made:
            made[scheme] = convert(ConvertArgs(str(hf), scheme, root / scheme, progress=False)).out
        return made[scheme]

    return get
