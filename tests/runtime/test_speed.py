"""``lowbit bench``: the speed report's arithmetic against an independent count of the folder's
bytes, and the thread count it runs with."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from lowbit.cli import main


def test_bench_reports_bytes_bandwidth_and_threads(tiny_chat, monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # restored after the test
    result = CliRunner().invoke(main, ["bench", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                                       "--prompt-tokens", "12", "--new-tokens", "4", "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    speed = json.loads(result.output.strip().splitlines()[-1])
    index = json.loads((tiny_chat.mlc_dir / "tensor-cache.json").read_text())
    assert speed["weight_bytes"] == sum(r["nbytes"] for shard in index["records"] for r in shard["records"])
    assert speed["threads"] == 2 and speed["prompt_tokens"] == 12 and speed["new_tokens"] == 4
    assert speed["prefill_tok_s"] > 0 and speed["decode_tok_s"] > 0 and speed["read_gb_s"] > 0.1
    assert math.isclose(speed["decode_gb_s"], speed["decode_tok_s"] * speed["weight_bytes"] / 1e9)
    assert math.isclose(speed["limit_tok_s"], speed["read_gb_s"] * 1e9 / speed["weight_bytes"])


def test_bench_table(tiny_chat):
    result = CliRunner().invoke(main, ["bench", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                                       "--prompt-tokens", "8", "--new-tokens", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[-3:]] == ["prefill", "decode", "limit"]
