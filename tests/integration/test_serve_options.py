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


def test_serve_options_reach_the_engine_and_the_app(capsys, monkeypatch):
    """Bug guard: the limits must reach the server, not only be parsed: --max-queue and
    --max-restarts the Engine, --default-max-tokens and --max-tokens-limit the app (a request
    without max_tokens gets the default; one over the limit a 400), and /health answers."""
    import socket

    import uvicorn
    from fastapi.testclient import TestClient

    from draftsmith import CausalLM
    from tests.conftest import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    target = CausalLM(tiny_model("llama", vocab=len(tok), seed=3, eos=tok.eos_token_id, max_len=128).model, tok,
                      name="tiny")
    monkeypatch.setattr("draftsmith.target.load_target", lambda *a, **k: target)
    seen = {}

    def fake_run(app, host, port, log_level):
        with TestClient(app) as client:
            seen["health"] = client.get("/health").json()
            seen["default"] = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello world",
                                                                    "temperature": 0, "stream": False}).json()
            seen["over"] = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello world",
                                                                 "max_tokens": 9}).json()

    import draftsmith.serve as serve_pkg

    real = serve_pkg.Engine

    def spy(*a, **k):
        seen["engine"] = real(*a, **k)
        return seen["engine"]

    monkeypatch.setattr(serve_pkg, "Engine", spy)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    code = main(["serve", "--served-name", "tiny", "--dtype", "fp32", "--no-smartspec", "--port", port,
                 "--max-queue", "7", "--max-restarts", "2", "--default-max-tokens", "3", "--max-tokens-limit", "8"])
    assert code == 0, capsys.readouterr().err
    engine = seen["engine"]
    assert engine.max_queue == 7 and engine.jobs.maxsize == 7 and engine.max_restarts == 2
    assert seen["health"]["status"] == "ok"
    assert seen["default"]["usage"]["completion_tokens"] <= 3
    assert "over this server's limit of 8" in seen["over"]["error"]["message"]
