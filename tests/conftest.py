"""Tiny random models built from a config: seconds, no downloads.

`pytest --device cuda` (or DRAFTSMITH_TEST_DEVICE=cuda) builds every tiny model on that device,
so the whole tiny-model suite runs on a GPU; the default is cpu. Asking for a device this machine
lacks stops the run at once with a clear message."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from draftsmith import CausalLM, DrafterBase

# Tiny models gain nothing from threads, and threads oversubscribed by a busy machine slow each
# 64-wide matmul twentyfold.
torch.set_num_threads(1)

DEVICE = torch.device(os.environ.get("DRAFTSMITH_TEST_DEVICE") or "cpu")  # set by --device (pytest_configure)


def pytest_addoption(parser):
    parser.addoption("--device", default=None,
                     help="device for the tiny test models: cpu (default), cuda, cuda:N, mps "
                          "(env DRAFTSMITH_TEST_DEVICE)")


def pytest_configure(config):
    global DEVICE
    name = config.getoption("--device") or os.environ.get("DRAFTSMITH_TEST_DEVICE") or "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        pytest.exit(f"--device {name!r}: not a torch device (use cpu, cuda, cuda:N or mps)", returncode=4)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            pytest.exit(f"--device {name!r} asked for, but torch {torch.__version__} sees no CUDA device here",
                        returncode=4)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            pytest.exit(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)", returncode=4)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        pytest.exit(f"--device {name!r} asked for, but MPS is not available here", returncode=4)
    DEVICE = dev


def pytest_report_header(config):
    return f"draftsmith test device: {DEVICE}"


def device() -> torch.device:
    """The device the tiny models live on (--device)."""
    return DEVICE


ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def tiny_model(arch: str = "llama", vocab: int = 96, seed: int = 0, layers: int = 2, std: float = 0.2,
               eos: int | None = None, max_len: int = 512, device: str | torch.device | None = None) -> CausalLM:
    """A random causal LM on the test device (--device; `device` overrides). A large init std
    spreads the logits, so greedy ties (which would make fp32 chunked-vs-single forwards disagree
    by rounding) do not occur. The weights are made on the CPU from `seed`, then moved: the same
    model whatever the device."""
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_len,
        initializer_range=std, eos_token_id=eos, bos_token_id=None, pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).to(device if device is not None else DEVICE)
    return CausalLM(model, tokenizer=None, name=f"tiny-{arch}-{seed}")


def argmax_logits(argmaxes: list[int], vocab: int) -> torch.Tensor:
    """[1, len, vocab] logits whose argmax at each position is given."""
    logits = torch.zeros(1, len(argmaxes), vocab)
    for i, t in enumerate(argmaxes):
        logits[0, i, t] = 5.0
    return logits


@pytest.fixture(params=sorted(ARCHS))
def arch(request) -> str:
    return request.param


_PLAIN: dict[tuple, list[int]] = {}


def plain_ids(arch: str, prompt: list[int], max_new_tokens: int, ignore_eos: bool = False) -> list[int]:
    """Plain decoding's ids for `tiny_model(arch)` with its default seed (the same weights in every
    test), computed once per test process: the drafter matrices compare dozens of recipes against
    the same few references."""
    key = (arch, tuple(prompt), max_new_tokens, ignore_eos)
    if key not in _PLAIN:
        from draftsmith import SamplingParams, SpeculativeDecoder

        params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
        _PLAIN[key] = SpeculativeDecoder(tiny_model(arch), "none").generate(prompt, params).token_ids
    return _PLAIN[key]


class WrongDrafter(DrafterBase):
    """Proposes k tokens the target never picks greedily: (target argmax + 1) mod V."""

    name = "wrong"

    def __init__(self, target: CausalLM, k: int = 4):
        self.twin, self.k = CausalLM(target.model), k

    def fork(self):
        other = super().fork()
        other.twin = CausalLM(self.twin.model)  # a cache of its own
        return other

    def propose(self, ctx):
        from draftsmith import Draft

        k = min(self.k, ctx.max_tokens)
        if k <= 0:
            return Draft.empty()
        self.twin.reset()
        logits = self.twin.forward(ctx.ids).logits[0, -1]  # [V]
        wrong = (int(logits.argmax()) + 1) % logits.shape[-1]
        return Draft(torch.full((1, k), wrong, dtype=torch.long))


def tiny_tokenizer(vocab: int = 320):
    """A byte-level BPE tokenizer trained in memory, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "speculative decoding drafts and verifies tokens",
              "hello world, this is a tiny tokenizer for tests"] * 20
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<eos>", "<user>", "<assistant>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.chat_template = ("{% for m in messages %}<user>{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    return fast


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


def random_heads(target: CausalLM, kind: str, folder, num_heads: int = 3, seed: int = 0, scale: float = 0.3) -> str:
    """Untrained draft heads for `target` with perturbed weights (so they propose something
    other than the target's own next token), saved to `folder`."""
    from draftsmith.drafters.heads import HeadsConfig, build_heads, save_heads

    torch.manual_seed(seed)
    module = build_heads(HeadsConfig.for_target(kind, target.config, num_heads=num_heads))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    save_heads(module, folder)
    return str(folder)
