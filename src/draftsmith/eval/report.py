"""Summaries of eval records: one row per (task, method), as JSON and a markdown table.

Per row: the score (GSM8K accuracy or HumanEval pass@1, correct / cases), its difference from
the `none` baseline in points, speed (tokens/s over the whole task, speedup over `none`, τ =
tokens per step), similarity to plain decoding (mean difflib ratio, and the share of outputs
identical token for token) and whether the rule was lossless. A lossy method that loses more
than `LOSS_POINTS` points is flagged in the table and in `warnings`."""

from __future__ import annotations

import json
from pathlib import Path

LOSS_POINTS = 2.0
SCORE_NAME = {"gsm8k": "accuracy", "humaneval": "pass@1"}


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    for task in dict.fromkeys(r["task"] for r in records):
        recs = [r for r in records if r["task"] == task]
        methods = list(dict.fromkeys(r["method"] for r in recs))
        base = None
        for m in methods:
            mr = [r for r in recs if r["method"] == m]
            n = len(mr)
            correct = sum(bool(r["correct"]) for r in mr)
            tokens, wall = sum(r["new_tokens"] for r in mr), sum(r["wall_time"] for r in mr)
            steps = [r["steps"] for r in mr if r["steps"]]
            row = {
                "task": task, "method": m, "verifier": mr[0]["verifier"],
                "lossless": all(r["lossless"] is not False for r in mr), "cases": n, "correct": correct,
                "score": round(100 * correct / n, 2) if n else 0.0, "score_name": SCORE_NAME.get(task, "score"),
                "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
                "tau": round(tokens / sum(steps), 3) if steps else None,
                "similarity": round(sum(r["similarity"] for r in mr) / n, 4) if n else 0.0,
                "identical": round(sum(r["matches_baseline"] for r in mr) / n, 4) if n else 0.0,
                "new_tokens": tokens,
            }
            if base is None:
                base = row
            row["delta_points"] = round(row["score"] - base["score"], 2)
            row["speedup"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3) if base["tokens_per_s"] else None
            row["loses_quality"] = (not row["lossless"]) and row["delta_points"] < -LOSS_POINTS
            rows.append(row)
    return rows


def warnings_for(rows: list[dict]) -> list[str]:
    return [f"{r['method']} loses {-r['delta_points']:.1f} points of {r['task']} {r['score_name']} against plain "
            f"decoding ({r['score']:.1f} vs {r['score'] - r['delta_points']:.1f}, {r['cases']} cases) for a "
            f"{r['speedup']:.2f}x speedup" for r in rows if r["loses_quality"]]


def markdown(rows: list[dict]) -> str:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        tr = [r for r in rows if r["task"] == task]
        name = tr[0]["score_name"]
        out += [f"### {task} ({tr[0]['cases']} cases)", "",
                f"| method | lossless | {name} | Δ points | tok/s | speedup | τ | similarity | identical |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in tr:
            flag = " ⚠" if r["loses_quality"] else ""
            tau = f"{r['tau']:.2f}" if r["tau"] else "-"
            out.append(f"| {r['method']} | {'yes' if r['lossless'] else '**no**'} | {r['score']:.1f} ({r['correct']}/"
                       f"{r['cases']}) | {r['delta_points']:+.1f}{flag} | {r['tokens_per_s']:.1f} | "
                       f"{r['speedup']:.2f}x | {tau} | {r['similarity']:.3f} | {100 * r['identical']:.0f}% |")
        out.append("")
    return "\n".join(out)


def print_table(rows: list[dict], title: str, file=None) -> None:
    import sys

    file = file or sys.stdout
    print(title, file=file)
    for r in rows:
        tau = f"{r['tau']:.2f}" if r["tau"] else "-"
        print(f"  {r['task']:9} {r['method']:40} {'' if r['lossless'] else '(lossy) '}{r['score_name']} "
              f"{r['score']:5.1f} ({r['delta_points']:+.1f}) {r['tokens_per_s']:6.1f} tok/s {r['speedup'] or 0:.2f}x "
              f"τ {tau} similarity {r['similarity']:.3f}", file=file)


def write(out: Path, records: list[dict], rows: list[dict], header: dict) -> tuple[Path, Path]:
    """results.json (settings, summary rows, warnings, every record) and report.md."""
    out.mkdir(parents=True, exist_ok=True)
    warns = warnings_for(rows)
    (out / "results.json").write_text(json.dumps({**header, "summary": rows, "warnings": warns, "records": records},
                                                 indent=1) + "\n")
    md = [f"# {header.get('title', 'draftsmith eval')}", "", f"`{header.get('command', '')}`", "",
          f"{header.get('date', '')}, {header.get('machine', '')}", "", markdown(rows)]
    if warns:
        md += ["Quality warnings (lossy rules losing more than "
               f"{LOSS_POINTS:g} points):", ""] + [f"- {w}" for w in warns] + [""]
    (out / "report.md").write_text("\n".join(md))
    return out / "results.json", out / "report.md"


def complete_cases(records: list[dict]) -> list[dict]:
    """The records of the cases every method finished (a run stopped early leaves its last case partial)."""
    methods = set(r["method"] for r in records)
    done = {}
    for r in records:
        done.setdefault((r["task"], r["case_id"]), set()).add(r["method"])
    return [r for r in records if done[r["task"], r["case_id"]] == methods]


def main(argv: list[str] | None = None) -> int:
    """python -m draftsmith.eval.report DIR [--title T] [--command C]: summarize DIR/records.jsonl
    (streamed by `draftsmith eval --out DIR`, also from a run stopped early: its complete cases only)
    into DIR/results.json and DIR/report.md."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m draftsmith.eval.report")
    p.add_argument("folder")
    p.add_argument("--title", default="draftsmith eval")
    p.add_argument("--command", default="")
    p.add_argument("--machine", default="")
    p.add_argument("--date", default="")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    lines = (folder / "records.jsonl").read_text().splitlines()
    records = complete_cases([json.loads(line) for line in lines if line.strip()])
    if not records:
        print(f"no complete case in {folder / 'records.jsonl'}", file=sys.stderr)
        return 2
    rows = summarize(records)
    header = {"title": args.title, "command": args.command, "machine": args.machine, "date": args.date}
    paths = write(folder, records, rows, header)
    print_table(rows, args.title)
    print("wrote " + ", ".join(str(x) for x in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
