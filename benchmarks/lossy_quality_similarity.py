"""Similarity of each method's output to the lossless speculative run (`ngram`, greedy) as well as to
plain decoding: in bf16 the lossless run itself parts from plain decoding (a k-token forward rounds
differently from a 1-token one), so the lossy rules are best read against both.

    python benchmarks/lossy_quality_similarity.py benchmarks/smollm2-135m-lossy-quality"""

import json
import sys
from pathlib import Path

from draftsmith.eval.report import complete_cases
from draftsmith.eval.runner import similarity

folder = Path(sys.argv[1])
records = complete_cases([json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines() if x.strip()])
ref = {(r["task"], r["case_id"]): r["output"] for r in records if r["method"] == "ngram"}
rows = {}
for r in records:
    key = (r["task"], r["method"])
    rows.setdefault(key, []).append(similarity(r["output"], ref[r["task"], r["case_id"]]))
print("| task | method | cases | similarity to lossless ngram | identical to it |")
print("| --- | --- | --- | --- | --- |")
for (task, method), sims in rows.items():
    print(f"| {task} | {method} | {len(sims)} | {sum(sims) / len(sims):.3f} | {sum(s == 1.0 for s in sims)}/{len(sims)} |")
