"""Model cards (README.md) for what training makes, a drafter (`write_card`) or draft heads
(`write_heads_card`): what it is, how it was trained, how to use it. Every card is written by
`write_readme`."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.sharegpt import is_sharegpt


def write_readme(out: Path, lines: list[str]) -> Path:
    """Write a card's lines as `out`/README.md (one line each, ending in a newline)."""
    path = Path(out) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def lineage(folder: str | Path) -> list[str]:
    """The stages that made the drafter in `folder`, newest first, from the training.json each
    stage writes (a stage whose folder or record is gone ends the list)."""
    steps, seen = [], set()
    while folder and str(folder) not in seen:
        seen.add(str(folder))
        record = Path(folder) / "training.json"
        if not record.is_file():
            break
        try:
            cfg = json.loads(record.read_text())["config"]
        except (ValueError, KeyError, TypeError):
            break
        extra = cfg.get("extra", {})
        what = f"{cfg.get('stage')}" + (f" ({cfg['loss']})" if cfg.get("stage") == "distill" else "")
        steps.append(f"{folder}: {what}, {cfg.get('steps')} steps of batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, "
                     f"on {extra.get('stage_data', '?')}" +
                     (f"; held-out top-1 agreement {extra['held_out']['top1_agreement']}" if "held_out" in extra else ""))
        folder = extra.get("init_from")
    return steps


def write_card(out: Path, target, model, record: dict, results: str | None = None, name: str | None = None) -> Path:
    """`name`: what `build_drafter(..., model=NAME)` takes (default: the folder's path)."""
    cfg, extra = record["config"], record["config"].get("extra", {})
    params = sum(p.numel() for p in model.parameters())
    c = model.config
    lines = [
        "---", "library_name: transformers", "tags: [speculative-decoding, draft-model, draftsmith]", "---",
        f"# Draft model for {target.name}", "",
        f"A {params / 1e6:.1f}M-parameter Llama-style drafter ({c.num_hidden_layers} layers, width {c.hidden_size}, "
        f"tied embeddings) that shares {target.name}'s tokenizer, trained with "
        "[draftsmith](https://example.invalid/draftsmith) for speculative decoding. "
        "Speculative decoding with it is lossless: the output distribution is the target's.", "",
        "## Use", "", "```python",
        "from draftsmith import load_target, build_drafter, SpeculativeDecoder",
        f"target = load_target({target.name!r})",
        f"drafter = build_drafter('draft_model', model={name or str(out)!r})",
        "print(SpeculativeDecoder(target, drafter).generate('Hello!').text)", "```", "",
        "It is a plain `LlamaForCausalLM` folder with the target's tokenizer and vocabulary size: "
        "`AutoModelForCausalLM.from_pretrained` loads it, and it is the shape vLLM's draft-model speculative "
        "decoding takes (`speculative_config={\"model\": PATH, \"num_speculative_tokens\": 5}`; not run under vLLM "
        "by this project, which has no GPU).", "",
        "## Training", "",
        f"- stage: {cfg['stage']}, loss: {cfg['loss']}, steps: {cfg['steps']}, batch: {cfg['batch_size']}, "
        f"lr: {cfg['lr']}, seed: {cfg['seed']}",
        f"- data: {extra.get('stage_data', '?')}",
    ]
    if cfg.get("on_policy"):
        lines.append(f"- DistillSpec on-policy fraction {cfg['on_policy']} (drafter temperature {cfg['on_policy_temperature']})")
    if cfg.get("adaspec_ref"):
        lines.append(f"- AdaSPEC token selection: keep {cfg['adaspec_keep']} against reference {cfg['adaspec_ref']}")
    if cfg.get("train_vocab"):
        data = f"the data of the drafter it started from ({extra['vocab_from']})" if "vocab_from" in extra else "the data"
        lines.append(f"- training vocabulary: the {cfg['train_vocab']} most frequent tokens of {data} "
                     "(`draft_vocab.safetensors`); draftsmith's `draft_model` drafts over them only (q is zero "
                     "elsewhere, still lossless). Other engines read the whole LM head, whose other rows were "
                     "trained as input embeddings only.")
    if "init" in extra:
        lines.append(f"- init: {extra['init']}")
    if "init_from" in extra:
        lines.append(f"- init_from: {extra['init_from']}" + "".join(f"\n  - {step}" for step in lineage(extra["init_from"])))
    if record.get("final_metrics"):
        lines.append("- last logged: " + ", ".join(f"{k} {v:.4g}" for k, v in record["final_metrics"].items()))
    if "held_out" in extra:
        h = extra["held_out"]
        lines.append(f"- held-out sequences ({h['tokens']} tokens): top-1 agreement {h['top1_agreement']}, "
                     f"TVD(p, q) {h['tvd']} (one sampled draft token is accepted with probability 1 - TVD)")
    if "pard_held_out" in extra:
        h = extra["pard_held_out"]
        lines.append(f"- parallel drafting (PARD): mask token {extra.get('pard_token')} (`pard_token` in config.json), "
                     f"k {extra.get('pard_k')}; held-out top-1 agreement with the data by draft position, given the "
                     f"true prefix ({h['rows']} rows): " + ", ".join(f"{a:.3f}" for a in h["agreement_by_position"]))
    lines += ["", "Never trained on any evaluation set (Spec-Bench, MT-bench, HumanEval, GSM8K)."]
    if results:
        lines += ["", "## Measured", "", results]
    return write_readme(out, lines)


CARD_ARCHITECTURE = {
    "medusa": "- heads: {heads}, residual blocks per head: {layers}",
    "hydra": "- heads: {heads}, residual blocks per head: {layers}",
    "eagle": "- one Llama decoder layer on [feature; next-token embedding] (EAGLE-style)",
    "amphista": "- heads: {heads}, residual blocks per head: {layers}, then one bi-directional decoder layer over the "
                "heads (Amphista)",
    "koala": "- heads: {heads}, decoder blocks per head: {layers} (KOALA on Hydra)",
    "eagle3": "- EAGLE-3: fc over the inputs of target layers {aux}, one decoder layer on [embedding; feature] "
              "(2H-wide attention), its own norm and LM head over a {vd}-token draft vocabulary",
    "falcon": "- Falcon: EAGLE's decoder layer drafting {block} tokens per forward (semi-autoregressive, relaxed "
              "causal mask over the newest {block} pairs)",
    "fspad": "- FSPAD: EAGLE's decoder layer on [next-token embedding; feature; feature ⊙ embedding] (feature "
             "sampling), trained with partial alignment distillation",
    "chimera": "- Chimera: trigram encoder, full-context encoder (one causal decoder layer), {heads} residual decoding "
               "heads ({layers} residual block each) drafting in parallel",
    "glide": "- GliDe: one draft block (self-attention over its tokens, cross-attention to the target's keys and values "
             "at layer {glide}, MLP), the target's LM head",
    "longspec": "- LongSpec: GliDe's draft block (cross-attention to the target's keys and values at layer {glide}) with a "
                "constant-size cache: self-attention over the first {sink} and the last {window} tokens; anchor-offset "
                "indices in training",
}
RECURRENT_KINDS = ("eagle", "eagle3", "falcon", "fspad", "glide", "longspec")  # heads whose rows are draft steps, not heads


def write_heads_card(out: Path, cfg, metrics: dict) -> Path:
    """The card of draft heads (`cfg`: their HeadsConfig, with `training` filled in)."""
    t = cfg.training
    lines = [f"# {cfg.kind} draft heads for {cfg.target}", "",
             f"Trained by `draftsmith train heads --kind {cfg.kind}` with the target frozen, on "
             + (f"ShareGPT first turns (`{t['data']}`; ShareGPT's answers, the target's soft labels)."
                if is_sharegpt(str(t.get("data", "")))
                else "the target's own answers (self-distillation)."), "",
             CARD_ARCHITECTURE[cfg.kind].format(heads=cfg.num_heads, layers=cfg.num_layers,
                                                aux=list(getattr(cfg, "aux_layers", [])),
                                                vd=getattr(cfg, "draft_vocab_size", 0),
                                                block=getattr(cfg, "block", 0), glide=getattr(cfg, "glide_layer", -1),
                                                window=getattr(cfg, "window", 0), sink=getattr(cfg, "sink", 0)),
             f"- loss: {t.get('loss')}, steps: {t.get('steps')} x {t.get('batch_tokens')} answer tokens, lr {t.get('lr')}"
             f", training vocabulary: {t.get('train_vocab') or 'all'} tokens"
             + (f", adversarial weight {t['adversarial']}" if t.get("adversarial") else "")
             + (f", {'passes' if cfg.kind == 'falcon' else 'draft steps'} trained: {t.get('unroll', 1)}, feature noise "
                f"{t.get('noise')}" + (f", glance {t.get('glance')}" if cfg.kind == "falcon" else "")
                + (f", feature regression on {t.get('align')} of the dimensions" if (t.get("align") or 1) < 1 else "")
                if cfg.kind in RECURRENT_KINDS else ""),
             f"- training sequences: {t.get('sequences')}"
             + (f" ({t['sequence_answer_tokens']} answer tokens)" if "sequence_answer_tokens" in t else "")
             + f", answer tokens seen: {t.get('answer_tokens_seen')}"
             + (f", {t['tokens_per_second']:.0f} answer tokens/s (the last run)" if "tokens_per_second" in t else ""), "",
             ("## Held-out top-1 agreement with the target's argmax, per draft step (step u drafts from the head's "
              "own u-1 newest features)" if cfg.kind in RECURRENT_KINDS else
              "## Held-out top-1 agreement with the target's argmax, per head"), "",
             " | ".join(f"{'step' if cfg.kind in RECURRENT_KINDS else 'head'} {i + (cfg.kind in RECURRENT_KINDS)}: {a:.3f}"
                        for i, a in enumerate(metrics["top1_agreement"])) +
             f" ({metrics['tokens']} tokens)", "",
             "Use: `build_drafter(\"" + cfg.kind + "\", heads=\"THIS_FOLDER\")`."]
    return write_readme(out, lines)
