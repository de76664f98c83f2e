"""`serve --exact`: a greedy answer does not depend on what else the server is decoding.

The bug it guards (issues 20 and 21): in bf16 the server answered a prompt differently when 7
other requests ran beside it (4 of 8 identical) and when 8 copies arrived at once (0 of 8), since
a batched verification forward rounds differently from a one-row one. A tiny bf16 model with a
small init std (near ties are common) behind the real app; every step verifies 1 + 4 tokens.
Without exact mode this test fails on the CPU (checked when written).
"""

from __future__ import annotations

import concurrent.futures as cf

import torch

from draftsmith import CausalLM
from draftsmith.serve import Engine
from tests.conftest import WrongDrafter, tiny_model, tiny_tokenizer
from tests.integration.test_serve_faults import PROMPT, Served, gate  # noqa: F401 - gate is a fixture


def bf16_target() -> CausalLM:
    tok = tiny_tokenizer()
    t = tiny_model("llama", vocab=len(tok), seed=5, eos=tok.eos_token_id, max_len=256, std=0.02)
    t.model.to(torch.bfloat16)
    return CausalLM(t.model, tok, name="tiny")


def test_exact_server_answers_do_not_depend_on_the_batch(gate):  # noqa: F811
    target = bf16_target()
    s = Served(Engine(target, WrongDrafter(target, k=4), smartspec=False, max_batch=8, exact=True))
    try:
        prompts = [f"{PROMPT} {word}" for word in ("one", "two", "three", "four", "five", "six", "seven", "eight")]

        def answer(p: str) -> list:
            r = s.complete(p, max_tokens=24)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        alone = [answer(p) for p in prompts]
        for batch, expected in ((prompts, alone), ([prompts[0]] * 8, [alone[0]] * 8)):
            held = gate(s.engine)
            with cf.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(answer, p) for p in batch]
                s.wait(held.entered.is_set, "the first admission")
                s.wait(lambda: len(s.engine.jobs) >= 7, "the others to queue")
                held.set()
                assert [f.result() for f in futures] == expected
    finally:
        s.close()
