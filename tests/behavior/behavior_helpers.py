"""Builders of crafted samples/problems files for the behaviour tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def samples_rows(model: str, flags: dict[str, list[bool]], answers: dict[str, list] | None = None) -> list[dict]:
    rows = []
    for pid, fl in flags.items():
        for j, c in enumerate(fl):
            ext = answers[pid][j] if answers else ("1" if c else "0")
            rows.append({"id": pid, "model": model, "sample_index": j, "completion": f"answer {ext}",
                         "extracted": ext, "correct": c, "logprob": -1.0, "n_tokens": 3,
                         "finish_reason": "stop"})
    return rows
