"""Write a pruned draft vocabulary (drafters/heads/vocab.py) for the heads shipped with the default model,
from the token counts of ShareGPT answers (the packaged data; the rollouts the heads were trained
on were not kept). `draftsmith train heads` writes this file itself from its training answers.

    .venv/bin/python benchmarks/draft_vocab_sharegpt.py [--docs 5000]
"""

import argparse
from pathlib import Path

from draftsmith import load_target
from draftsmith.drafters.heads.vocab import count_tokens, save_vocab
from draftsmith.data.sharegpt import read_sharegpt, sharegpt_path, turns

PACKS = Path(__file__).resolve().parent.parent / "src" / "draftsmith" / "packs"

parser = argparse.ArgumentParser()
parser.add_argument("--docs", type=int, default=5000, help="ShareGPT answers to count")
parser.add_argument("--keep", type=int, default=16384, help="ids stored (drafters use the first `vocab`)")
args = parser.parse_args()

target = load_target("smollm2-135m-instruct", dtype="float32")
texts = []
for record in read_sharegpt(sharegpt_path()):
    texts += [text for role, text in turns(record) if role == "gpt" and text.strip()]
    if len(texts) >= args.docs:
        break
ids = count_tokens(target.tokenizer(texts[: args.docs], add_special_tokens=False)["input_ids"])[: args.keep]
for kind in ("medusa", "hydra", "eagle"):
    print(save_vocab(PACKS / f"smollm2-135m-instruct-{kind}", ids, always=sorted(target.eos_token_ids)))
