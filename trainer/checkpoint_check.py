"""The checkpoints' integrity check and repair (``mindloop doctor`` runs it after the graph's).

Checks ``checkpoints/``: each checkpoint's manifest and weight files (the
safetensors header against the file's size, read without torch); unfinished
saves (``.tmp-*``); ``promoted.json``, the checkpoint it names, and whether it
is behind ``history.jsonl``.

:func:`repair` runs the same checks and never deletes the only copy of
anything: a corrupt checkpoint is moved to ``checkpoints/.quarantine/<id>``;
a promoted pointer that names a bad or missing checkpoint is moved back to
the nearest whole ancestor, else the base model (recorded in the
checkpoints' history); an unreadable ``promoted.json`` is kept as
``promoted.json.damaged-<time>``; unfinished saves are cleaned.

    >>> import tempfile
    >>> check(tempfile.mkdtemp() + "/checkpoints").checks
    {'checkpoints': 'ok'}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mindloop.graph.check import Findings
from mindloop.graph.salvage import fsync_dir
from mindloop.trainer.checkpoints import PROMOTED, WEIGHT_FILES, Checkpoints
from mindloop.trainer.errors import CheckpointError

__all__ = ["check", "repair"]


def check(root: str | os.PathLike, findings: Findings | None = None) -> Findings:
    """Check the checkpoints folder ``root``; nothing is changed."""
    return _run(Path(root), Findings() if findings is None else findings, repair=False, stamp="")


def repair(root: str | os.PathLike, findings: Findings | None = None, *, stamp: str | None = None) -> Findings:
    """Check the checkpoints folder ``root`` and repair what is found; ``stamp`` names what is kept aside
    (default: now)."""
    return _run(Path(root), Findings() if findings is None else findings, repair=True,
                stamp=stamp or time.strftime("%Y%m%d-%H%M%S"))


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, read without torch: header length, JSON, and data size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is cut short ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"{path.name}: its header runs past the end of the file"
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{path.name} is not a readable safetensors file ({e})"
    if 8 + n + end != size:
        return f"{path.name} is {size} bytes, its header says {8 + n + end}"
    return None


def _checkpoint_problem(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "manifest.json is missing"
    except (OSError, ValueError) as e:
        return f"manifest.json is not valid JSON ({e})"
    if not isinstance(manifest, dict) or manifest.get("kind") not in WEIGHT_FILES:
        return "manifest.json does not name a kind ('lora' or 'full')"
    for name in WEIGHT_FILES[manifest["kind"]]:
        if not (folder / name).exists():
            return f"{name} is missing"
    return _safetensors_problem(folder / WEIGHT_FILES[manifest["kind"]][0])


def _parent_of(folder: Path) -> str | None:
    try:
        parent = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("parent")
    except (OSError, ValueError, AttributeError):
        return None
    return parent if isinstance(parent, str) and parent and "/" not in parent and not parent.startswith(".") \
        else None


def _run(root: Path, findings: Findings, *, repair: bool, stamp: str) -> Findings:
    if not root.exists():
        findings.ok("checkpoints")
        return findings
    store = Checkpoints(root)
    unfinished = sorted(d.name for d in root.glob(".tmp-*"))
    if unfinished:
        p = findings.add("checkpoints", root, f"{len(unfinished)} unfinished save(s) of killed runs: "
                                            f"{', '.join(unfinished)}")
        if repair:
            store.clean()
            p.repair, p.fixed = "removed them (never listed or promoted; nothing whole was in them)", True
    bad: dict[str, str] = {}
    parents: dict[str, str | None] = {}
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        parents[d.name] = _parent_of(d)
        problem = _checkpoint_problem(d)
        if problem:
            bad[d.name] = problem
    pointer_path = root / PROMOTED
    pointer, pointer_problem = None, None
    if pointer_path.exists():
        try:
            pointer = json.loads(pointer_path.read_text(encoding="utf-8"))
            if not isinstance(pointer, dict) or not isinstance(pointer.get("checkpoint"), str):
                pointer_problem, pointer = "does not name a checkpoint", None
        except (OSError, ValueError) as e:
            pointer_problem = f"is not valid JSON ({e})"
    target = pointer["checkpoint"] if pointer else None
    if target is not None and target not in parents:
        pointer_problem = f"names checkpoint {target!r}, which does not exist"
    elif target is not None and target in bad:
        pointer_problem = f"names checkpoint {target!r}, which is corrupt ({bad[target]})"
    events = None
    try:
        events = store.history()
    except CheckpointError as e:
        findings.add("checkpoints", root / "history.jsonl", f"unreadable: {e}").repair = (
            "not repaired: the history of promotions is kept as it is; edit out the bad line" if repair else None)
    if events and pointer_problem is None:
        last = events[-1]
        logged = last.get("checkpoint") if last.get("event") == "promote" else last.get("to")
        if logged != target:  # a kill between the history's commit and the pointer's rename
            p = findings.add("promoted", pointer_path, f"names {target or 'the base model'}, but the last event in "
                                                     f"history.jsonl left {logged or 'the base model'} in use")
            if repair:
                pointer = store.recover()
                target = pointer["checkpoint"] if pointer else None
                p.repair, p.fixed = f"rolled the pointer forward to {target or 'the base model'}", True
                if target is not None and (target not in parents or target in bad):
                    pointer_problem = f"names checkpoint {target!r}, which is missing or corrupt"

    for ckpt, problem in bad.items():
        p = findings.add("checkpoints", root / ckpt, f"corrupt: {problem}")
        if repair:
            quarantine = root / ".quarantine"
            quarantine.mkdir(exist_ok=True)
            dest = quarantine / ckpt
            if dest.exists():
                dest = quarantine / f"{ckpt}-{stamp}"
            os.replace(root / ckpt, dest)
            fsync_dir(root)
            p.repair, p.fixed = f"moved to {dest.relative_to(root)} (kept, never listed or promoted)", True
    if pointer_problem:
        p = findings.add("promoted", pointer_path, pointer_problem)
        if repair:
            fallback = parents.get(target) if target else None
            while fallback is not None and (fallback in bad or fallback not in parents):
                fallback = parents.get(fallback)
            if pointer is None:  # unreadable: keep it, and serve the base model until something is promoted
                aside = pointer_path.with_name(f"{PROMOTED}.damaged-{stamp}")
                os.replace(pointer_path, aside)
                fsync_dir(root)
                p.repair = f"kept it as {aside.name}; the base model is served"
                if hasattr(store, "recover"):  # a history one step ahead of the pointer names what to serve
                    now = store.recover()
                    if now:
                        p.repair = f"kept it as {aside.name}; the history's last promotion, {now['checkpoint']}, " \
                                   "is served"
                p.fixed = True
            elif fallback:
                store.promote(fallback, reason=f"mindloop doctor: promoted.json {pointer_problem}")
                p.repair, p.fixed = f"promoted its nearest whole ancestor, {fallback}", True
            else:
                store.rollback(reason=f"mindloop doctor: promoted.json {pointer_problem}")
                p.repair, p.fixed = "rolled back to the base model (recorded in history.jsonl)", True
    if "checkpoints" not in findings.checks:
        findings.ok("checkpoints")
    if "promoted" not in findings.checks:
        findings.ok("promoted")
    return findings
