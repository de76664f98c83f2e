"""`draftsmith train data | pretrain | distill | heads`: the drafter-alignment recipe, stage by
stage, and draft heads on the frozen target."""

from __future__ import annotations

import argparse
import json

from ..errors import DraftsmithError

DEVICE_HELP = ("where the target runs and training happens: cpu (default), cuda, cuda:N or mps "
               "(an unavailable device is an error)")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)


def _common(p: argparse.ArgumentParser, *, steps: int, lr: float, batch: int) -> None:
    from ..catalog import DEFAULT_MODEL

    p.add_argument("--target", default=DEFAULT_MODEL, help=f"target model (default: {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="output folder (a Hugging Face model folder; reruns resume)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch, help="sequences per step per process")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    _device(p)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                   help="autocast the drafter's forward to bf16 (default: where it is faster than fp32, measured at start)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train the drafter's forward in fp32")
    p.add_argument("--train-vocab", type=int, default=8192,
                   help="train over the N most frequent tokens of the data, the vocabulary the drafter then drafts "
                        "over (0 = all; distill keeps the starting drafter's when it has one)")


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a drafter for a target: data, pretrain, align or distill")
    stages = t.add_subparsers(dest="stage", required=True)

    d = stages.add_parser("data", help="the target answers ShareGPT instructions (distillation data)")
    from ..catalog import DEFAULT_MODEL

    d.add_argument("--target", default=DEFAULT_MODEL)
    d.add_argument("--out", required=True, help="JSONL file (appended to; prompts already in it are skipped)")
    d.add_argument("--sharegpt", help="ShareGPT JSON file (default: the packaged one)")
    d.add_argument("--skip", type=int, default=0, help="skip the first N instructions")
    d.add_argument("--limit", type=int, default=2000, help="instructions to answer")
    d.add_argument("--batch-size", type=int, default=48,
                   help="rows decoding at once; a finished row's place goes to the next prompt at once")
    d.add_argument("--max-new-tokens", type=int, default=192)
    d.add_argument("--max-prompt-tokens", type=int, default=256)
    d.add_argument("--temperature", type=float, default=0.8)
    d.add_argument("--top-p", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--text-prefix", type=int, metavar="TOKENS",
                   help="FastDraft's text completion: the target continues the first TOKENS tokens of whole ShareGPT "
                        "conversations as plain text (no chat template) instead of answering first turns")
    d.add_argument("--drafter", default="none",
                   help="drafter spec for the generation (e.g. ngram): speculative and lossless, so the answers are "
                        "still the target's samples (default none: plain decoding)")
    _device(d)
    d.set_defaults(func=cmd_data)

    p = stages.add_parser("pretrain", help="a new drafter, next-token loss on chat-formatted ShareGPT")
    _common(p, steps=450, lr=1.5e-3, batch=8)
    p.add_argument("--sharegpt", help="ShareGPT JSON file (default: the packaged one)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=384, help="width (default 384; at most the target's)")
    p.add_argument("--init", default="target", choices=["target", "random"],
                   help="target: start from the target's embeddings (and layers at equal width)")
    p.set_defaults(func=cmd_pretrain)

    a = stages.add_parser("align", help="FastDraft: cross-entropy on the target's rollouts (answers and text continuations)")
    _common(a, steps=400, lr=5e-4, batch=8)
    a.add_argument("--drafter", required=True, help="drafter folder to start from (e.g. the pretrain output)")
    a.add_argument("--data", required=True,
                   help="rollouts JSONL from `draftsmith train data` (with or without --text-prefix; cat them together)")
    a.add_argument("--limit", type=int, help="use at most this many training rows")
    a.add_argument("--max-len", type=int, default=512)
    a.set_defaults(func=cmd_align)

    k = stages.add_parser("distill", help="knowledge distillation on target rollouts")
    _common(k, steps=400, lr=5e-4, batch=8)
    k.add_argument("--drafter", required=True, help="drafter folder to start from (e.g. the pretrain output)")
    k.add_argument("--data", required=True,
                   help="rollouts JSONL from `draftsmith train data` (the recipe's target answers), or `sharegpt` / a "
                        "ShareGPT .json file (first turns with ShareGPT's answers; the target still gives the labels)")
    k.add_argument("--features",
                   help="the target's features of the data's sequences in this file (the one `train heads --features` "
                        "makes from the same --data/--limit; made once if missing): p from the target's LM head, no "
                        "target forward per step; --batch-size x 256 answer tokens a step")
    k.add_argument("--limit", type=int, help="use at most this many training rows")
    k.add_argument("--loss", default="fkl", help="fkl | rkl | jsd | tvd | tvdpp (default fkl)")
    k.add_argument("--max-len", type=int, default=512)
    k.add_argument("--on-policy", type=float, default=0.0, help="DistillSpec: fraction of batches answered by the drafter")
    k.add_argument("--on-policy-temperature", type=float, default=1.0)
    k.add_argument("--adaspec-ref", help="AdaSPEC: reference drafter folder (e.g. a distilled drafter)")
    k.add_argument("--adaspec-keep", type=float, default=0.4, help="AdaSPEC: fraction of tokens kept")
    k.set_defaults(func=cmd_distill)

    r = stages.add_parser("pard", help="PARD: adapt a draft model to draft k tokens in one forward (mask tokens)")
    _common(r, steps=600, lr=3e-4, batch=8)
    r.add_argument("--drafter", required=True, help="draft model folder or pack name to start from")
    r.add_argument("--data", required=True,
                   help="rollouts JSONL from `draftsmith train data` (the target's answers), or `sharegpt` / a ShareGPT .json")
    r.add_argument("--k", type=int, default=4, help="tokens per draft it learns to predict (default 4)")
    r.add_argument("--keep", type=float, default=0.8,
                   help="COD: each deeper mask block keeps this fraction of the anchors of the one before (default 0.8)")
    r.add_argument("--mask-token", type=int,
                   help="the mask token id (default: the drafter's pard_token, else the largest id unused by the data)")
    r.add_argument("--limit", type=int, help="use at most this many training rows")
    r.add_argument("--max-len", type=int, default=512)
    r.set_defaults(func=cmd_pard)

    h = stages.add_parser("heads", help="draft heads (medusa, hydra, eagle, amphista, koala, eagle3, falcon, fspad, chimera, glide, longspec) on the "
                          "frozen target")
    h.add_argument("--kind", required=True, help="medusa | hydra | eagle | amphista | koala | eagle3 | falcon | fspad | chimera | glide | longspec")
    h.add_argument("--target", default=DEFAULT_MODEL)
    h.add_argument("--data", required=True,
                   help="rollouts JSONL from `draftsmith train data` (the target's own answers), or `sharegpt` "
                        "(the packaged ShareGPT: first turns with ShareGPT's answers) or a ShareGPT .json file")
    h.add_argument("--limit", type=int, help="use at most this many training sequences")
    h.add_argument("--features",
                   help="keep the target's features of the training sequences in this file, made once (H x 2 bytes a "
                        "token in bf16) and reused by every epoch and by later runs; without it they are made every step")
    h.add_argument("--out", required=True, help="output folder (reruns resume from its checkpoint)")
    h.add_argument("--steps", type=int, default=600)
    h.add_argument("--num-heads", type=int, default=4, help="heads; eagle: default draft length")
    h.add_argument("--num-layers", type=int, default=0,
                   help="blocks per head (not eagle); 0 = the kind's default (koala 2, others 1)")
    h.add_argument("--adversarial", type=float, default=0.0,
                   help="KOALA's adversarial term: weight of the generator loss against a discriminator (0 = off)")
    h.add_argument("--batch-tokens", type=int, default=2048)
    h.add_argument("--init", default="",
                   help="start from these trained heads (a folder `train heads` wrote, or `shipped`: the heads of this kind "
                        "shipped for the target; same kind "
                        "and shape, or an eagle head for falcon and fspad, a glide head for longspec): more data or steps on a head; an eagle3 head keeps its "
                        "draft vocabulary")
    h.add_argument("--micro-tokens", type=int, default=4096,
                   help="padded tokens per forward: a step's sequences run in batches of similar lengths "
                        "(eagle, eagle3; memory against speed)")
    h.add_argument("--lr", type=float, default=1e-3)
    h.add_argument("--loss", default="kl",
                   help="kl (the target's soft labels) | ce (the sampled tokens) | tv (total variation 1 - Σ min(p, q)) | "
                        "accept (-log Σ min(p, q), the log acceptance probability)")
    h.add_argument("--max-len", type=int, default=512)
    h.add_argument("--unroll", type=int, default=None,
                   help="eagle, eagle3: draft steps trained per position (EAGLE-3's training-time test; default eagle 1 "
                        "= EAGLE-1, eagle3 3); falcon: passes of --block tokens (default 2)")
    h.add_argument("--block", type=int, default=0, help="falcon: tokens drafted per forward (0 = 2)")
    h.add_argument("--glance", type=float, default=0.0,
                   help="falcon: share of the drafted inputs of passes after the first replaced by the target's "
                        "features (Falcon's glancing; 0 = off)")
    h.add_argument("--max-offset", type=int, default=None,
                   help="longspec: anchor-offset indices, each sequence's positions after the sink shifted by a random "
                        "offset up to this (default 7680; 0 = off)")
    h.add_argument("--align", type=float, default=None,
                   help="eagle kinds: share of the predicted feature's dimensions under the feature regression (FSPAD's "
                        "partial alignment distillation; default fspad 0.5, others 1)")
    h.add_argument("--noise", type=float, default=None,
                   help="eagle, eagle3: uniform noise U(-x, x) on the target's features (default eagle 0.1, eagle3 0)")
    h.add_argument("--unroll-weight", type=float, default=1.0, help="eagle: loss weight of draft steps after the first")
    h.add_argument("--cls-weight", type=float, default=0.1,
                   help="eagle: weight of the token loss beside the feature regression (EAGLE: 0.1)")
    h.add_argument("--train-vocab", type=int, default=8192,
                   help="train over the N most frequent answer tokens, the heads' draft vocabulary (0 = all; eagle3: "
                        "its draft_vocab_size, stored in the head)")
    h.add_argument("--seed", type=int, default=0)
    _device(h)
    h.add_argument("--save-every", type=int, default=100)
    h.set_defaults(func=cmd_heads)

    from .early_exit import add_parser as add_early_exit_parser  # `train early-exit` (train/early_exit.py)

    add_early_exit_parser(stages, DEFAULT_MODEL, _device)

    from .judge import add_parser as add_judge_parser  # `train judge` (train/judge.py)

    add_judge_parser(stages, DEFAULT_MODEL, _device)


def _config(args, stage: str, loss: str):
    from .trainer import TrainConfig

    cfg = TrainConfig(stage=stage, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      loss=loss, seed=args.seed, log_every=args.log_every, save_every=args.save_every,
                      bf16=args.bf16, train_vocab=args.train_vocab)
    if stage == "distill":
        cfg.on_policy, cfg.on_policy_temperature = args.on_policy, args.on_policy_temperature
        cfg.adaspec_ref, cfg.adaspec_keep = args.adaspec_ref, args.adaspec_keep
    cfg.check()
    return cfg


def _target(name: str, device: str = "cpu"):
    """The target for a training stage: bf16 where bf16 is the faster (a GPU, a CPU with bf16
    units), else fp32 (an AVX2-only CPU, where a bf16 forward over a batch is several times slower)."""
    from ..target import load_target, resolve_device
    from .trainer import bf16_pays

    return load_target(name, dtype="bfloat16" if bf16_pays(resolve_device(device)) else "float32", device=device)


def cmd_data(args) -> int:
    from ..data.sharegpt import sharegpt_instructions, sharegpt_path
    from .rollouts import generate_rollouts

    if args.limit < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise DraftsmithError("--limit, --batch-size and --max-new-tokens must be >= 1")
    target = _target(args.target, args.device)
    if args.text_prefix is not None:
        from ..data.sharegpt import sharegpt_texts
        from .rollouts import text_prefixes

        texts = sharegpt_texts(sharegpt_path(args.sharegpt), skip=args.skip, limit=args.limit)
        instructions = list(text_prefixes(target, texts, prefix_tokens=args.text_prefix, skip=args.skip))
    else:
        instructions = list(sharegpt_instructions(sharegpt_path(args.sharegpt), skip=args.skip, limit=args.limit))
    summary = generate_rollouts(target, instructions, args.out, temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                                batch_size=args.batch_size, seed=args.seed, drafter=args.drafter)
    print(json.dumps(summary))
    return 0


def cmd_pretrain(args) -> int:
    from .pipeline import pretrain

    cfg = _config(args, "pretrain", "ce")
    out = pretrain(_target(args.target, args.device), cfg, sharegpt=args.sharegpt, seq_len=args.seq_len, layers=args.layers,
                   hidden=args.hidden, init=args.init)
    print(out)
    return 0


def cmd_align(args) -> int:
    from .pipeline import align

    cfg = _config(args, "align", "ce")
    if args.limit is not None and args.limit < 1:
        raise DraftsmithError("--limit must be >= 1")
    print(align(_target(args.target, args.device), args.drafter, args.data, cfg, max_len=args.max_len, limit=args.limit))
    return 0


def cmd_distill(args) -> int:
    from .pipeline import distill

    cfg = _config(args, "distill", args.loss)
    if args.limit is not None and args.limit < 1:
        raise DraftsmithError("--limit must be >= 1")
    out = distill(_target(args.target, args.device), args.drafter, args.data, cfg, max_len=args.max_len, features=args.features,
                  limit=args.limit)
    print(out)
    return 0


def cmd_pard(args) -> int:
    from .pard import train_pard

    cfg = _config(args, "pard", "ce")
    if args.k < 1 or not 0.0 < args.keep <= 1.0 or (args.limit is not None and args.limit < 1):
        raise DraftsmithError("--k and --limit must be >= 1 and --keep in (0, 1]")
    out = train_pard(_target(args.target, args.device), args.drafter, args.data, cfg, k=args.k, keep=args.keep,
                     mask_token=args.mask_token, max_len=args.max_len, limit=args.limit)
    print(out)
    return 0


def cmd_heads(args) -> int:
    from .features import load_sequences
    from .heads import HeadsTrainConfig, train_heads

    cfg = HeadsTrainConfig(kind=args.kind, out=args.out, steps=args.steps, num_heads=args.num_heads,
                           num_layers=args.num_layers, batch_tokens=args.batch_tokens, micro_tokens=args.micro_tokens, init=args.init, lr=args.lr, loss=args.loss,
                           max_len=args.max_len, seed=args.seed, save_every=args.save_every,
                           adversarial=args.adversarial, train_vocab=args.train_vocab, data=args.data,
                           features=args.features or "", unroll=args.unroll, unroll_weight=args.unroll_weight,
                           cls_weight=args.cls_weight, noise=args.noise, block=args.block, glance=args.glance,
                           align=args.align, max_offset=args.max_offset)
    cfg.check()
    if args.limit is not None and args.limit < 1:
        raise DraftsmithError("--limit must be >= 1")
    target = _target(args.target, args.device)
    print(train_heads(target, load_sequences(target, args.data, limit=args.limit), cfg))
    return 0
