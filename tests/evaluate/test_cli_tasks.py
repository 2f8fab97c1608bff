"""`lowbit eval tasks` refuses bad input in one line, before loading anything."""

from __future__ import annotations

from click.testing import CliRunner

from lowbit.cli import main


def test_unknown_task_is_one_line_error():
    result = CliRunner().invoke(main, ["eval", "tasks", "smollm2-135m", "--tasks", "piqa,mmlu"])
    assert result.exit_code == 1
    assert "unknown task(s) ['mmlu']" in result.output
    assert "Traceback" not in result.output


def test_limit_must_be_positive():
    result = CliRunner().invoke(main, ["eval", "tasks", "smollm2-135m", "--limit", "0"])
    assert result.exit_code == 2
    assert "--limit" in result.output
