"""Training data: the TRL JSONL that ``mindloop compose`` writes, or a pattern's examples in the graph.

Three row shapes, all conversational (TRL reads them directly):

- ``sft``: ``{"prompt": [messages], "completion": [{"role": "assistant", "content": ...}]}``
- ``dpo``: ``{"prompt": [...], "chosen": [assistant message], "rejected": [assistant message]}``
- ``kto``: ``{"prompt": [...], "completion": [assistant message], "label": true|false}``

Extra keys (``id``, ``kind``) are kept for bookkeeping and dropped before
training. :func:`check_lengths` runs before any training step: a row longer
than the model's context is an error that names the row.

    >>> rows = rows_from_lines(['{"prompt": [{"role": "user", "content": "hi"}], '
    ...                         '"completion": [{"role": "assistant", "content": "hello"}]}'], "sft")
    >>> rows[0]["completion"][0]["content"]
    'hello'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from mindloop.trainer.errors import InvalidDataset

__all__ = ["OBJECTIVES", "check_lengths", "data_hash", "read_dataset", "rows_from_examples", "rows_from_lines"]

OBJECTIVES = ("sft", "dpo", "kto")
_KEYS = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}


def _messages(value: Any, where: str, key: str, *, assistant: bool = False) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidDataset(f"{where}: {key!r} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) and m["content"].strip()):
            raise InvalidDataset(f"{where}: {key}[{i}] must be {{'role': 'system'|'user'|'assistant', "
                                 "'content': non-empty text}")
        out.append({"role": m["role"], "content": m["content"]})
    if assistant and (len(out) != 1 or out[0]["role"] != "assistant"):
        raise InvalidDataset(f"{where}: {key!r} must be one assistant message")
    return out


def _row(data: Any, objective: str, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidDataset(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in _KEYS[objective] if k not in data]
    if missing:
        raise InvalidDataset(f"{where}: a {objective} row needs {', '.join(_KEYS[objective])}; missing "
                             f"{', '.join(missing)}")
    row: dict[str, Any] = {"prompt": _messages(data["prompt"], where, "prompt")}
    if row["prompt"][-1]["role"] != "user":
        raise InvalidDataset(f"{where}: the prompt must end with a user message")
    for key in _KEYS[objective][1:]:
        if key == "label":
            if not isinstance(data["label"], bool):
                raise InvalidDataset(f"{where}: 'label' must be true or false")
            row["label"] = data["label"]
        else:
            row[key] = _messages(data[key], where, key, assistant=True)
    row["id"] = str(data.get("id") or "")
    return row


def rows_from_lines(lines: Iterable[str], objective: str, *, source: str = "dataset") -> list[dict[str, Any]]:
    """Validated rows from JSONL lines; the first bad line raises :class:`InvalidDataset` naming it."""
    if objective not in OBJECTIVES:
        raise InvalidDataset(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}: line {n}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidDataset(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        rows.append(_row(data, objective, where))
    if not rows:
        raise InvalidDataset(f"{source}: the dataset is empty")
    return rows


def read_dataset(path: str | Path, objective: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file for ``objective`` (UTF-8; errors name the line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidDataset(f"{path}: no such file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = 1 + raw[: e.start].count(b"\n")
        raise InvalidDataset(f"{path}: line {line}: not valid UTF-8") from None
    return rows_from_lines(text.splitlines(), objective, source=str(path))


def rows_from_examples(examples: Sequence, objective: str) -> list[dict[str, Any]]:
    """Rows from :class:`graph.Example` nodes: every example for sft; those with a rejected reply for dpo;
    each example as a desirable row plus its rejected reply as an undesirable one for kto."""
    rows = []
    for e in examples:
        good = [{"role": "assistant", "content": e.completion}]
        if objective == "sft":
            rows.append({"prompt": e.prompt, "completion": good, "id": e.id})
        elif objective == "dpo":
            if e.rejected:
                rows.append({"prompt": e.prompt, "chosen": good,
                             "rejected": [{"role": "assistant", "content": e.rejected}], "id": e.id})
        else:
            rows.append({"prompt": e.prompt, "completion": good, "label": True, "id": e.id})
            if e.rejected:
                rows.append({"prompt": e.prompt, "completion": [{"role": "assistant", "content": e.rejected}],
                             "label": False, "id": e.id})
    checked = rows_from_lines((json.dumps(r) for r in rows), objective, source="pattern examples")
    return checked


def data_hash(rows: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of the rows' canonical JSON: two runs on the same data have the same hash."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def check_lengths(rows: Sequence[dict[str, Any]], tokenizer, max_length: int) -> int:
    """Raise :class:`InvalidDataset` for the first row longer than ``max_length`` tokens; return the longest."""
    longest = 0
    for i, r in enumerate(rows):
        for key in ("completion", "chosen", "rejected"):
            if key not in r:
                continue
            text = tokenizer.apply_chat_template([*r["prompt"], *r[key]], tokenize=False)
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            longest = max(longest, n)
            if n > max_length:
                name = f" ({r['id']})" if r.get("id") else ""
                raise InvalidDataset(f"example {i + 1}{name} is {n} tokens with its {key}; the limit is "
                                     f"{max_length} (--max-length, at most the model's context)")
    return longest
