"""Every `serve` option is checked before the model loads: a bad value is one line, `error: ...`,
exit 2, no traceback (the model would take seconds to minutes to load first). load_target is
made to fail the test, so nothing is loaded or downloaded."""

from __future__ import annotations

import pytest

from draftsmith.cli import main


@pytest.fixture
def no_load(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a model was loaded before the bad argument was refused")

    monkeypatch.setattr("draftsmith.target.load_target", fail)


@pytest.mark.parametrize("argv, needle", [
    (["--max-batch", "0"], "--max-batch must be an integer >= 1, got 0"),
    (["--max-batch", "-4"], "--max-batch must be an integer >= 1, got -4"),
    (["--k-max", "-1"], "--k-max must be an integer >= 0"),
    (["--max-body", "0"], "--max-body must be an integer >= 1"),
    (["--max-queue", "0"], "--max-queue must be an integer >= 1, got 0"),
    (["--default-max-tokens", "0"], "--default-max-tokens must be an integer >= 1"),
    (["--max-tokens-limit", "-1"], "--max-tokens-limit must be an integer >= 0"),
    (["--max-restarts", "-1"], "--max-restarts must be an integer >= 0"),
    (["--threads", "0"], "--threads must be an integer >= 1"),
    (["--threads", "-2"], "--threads must be an integer >= 1"),
    (["--port", "0"], "--port must be in 1..65535"),
    (["--port", "70000"], "--port must be in 1..65535"),
    (["--request-timeout", "-1"], "--request-timeout must be a number of seconds >= 0"),
    (["--request-timeout", "nan"], "--request-timeout must be a number of seconds >= 0"),
    (["--first-token-timeout", "inf"], "--first-token-timeout must be a number of seconds >= 0"),
    (["--body-timeout", "-0.5"], "--body-timeout must be a number of seconds >= 0"),
    (["--default-max-tokens", "512", "--max-tokens-limit", "256"], "--default-max-tokens (512) is over --max-tokens-limit (256)"),
    (["--dtype", "fp33"], "unknown dtype 'fp33'"),
])
def test_bad_serve_options_are_one_line_before_the_model_loads(capsys, no_load, argv, needle):
    """Bug: `serve --max-batch 0` printed a traceback (and the other numeric options were not
    checked at all, or only after the model loaded): each is one line naming the option."""
    code = main(["serve", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


@pytest.mark.parametrize("option", ["--max-queue", "--max-tokens-limit", "--default-max-tokens", "--max-batch"])
def test_non_integer_serve_options_are_usage_errors(capsys, option):
    """A value that is not an integer is argparse's usage error (exit 2), never a traceback."""
    with pytest.raises(SystemExit) as exc:
        main(["serve", option, "2.5"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{option}: invalid int value" in err and "Traceback" not in err
