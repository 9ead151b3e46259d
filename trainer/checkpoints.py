"""Checkpoints on disk: written whole or not at all, promoted and rolled back by an atomic rename.

Layout under ``$MINDLOOP_HOME/checkpoints/``::

    <id>/manifest.json        id, kind (lora | full), base model, parent, run, data hash, created
    <id>/adapter_model.safetensors + adapter_config.json     (lora: the PEFT format vLLM loads)
    <id>/model.safetensors + config.json + tokenizer files    (full)
    promoted.json             {"checkpoint": id, "path": id, "kind": ...}: what the chat model serves
    history.jsonl             every promotion and rollback, appended

A run saves into ``.tmp-<id>/``, fsyncs every file and the folder, then
renames it to ``<id>/``: a killed run leaves at most a ``.tmp-`` folder, which
is never listed, never promoted and removed by :meth:`Checkpoints.clean`.
``promoted.json`` is replaced the same way (write, fsync, rename), so the
chat model (``mindloop.agents.chat.backends.LocalBackend``) always reads a whole pointer.

``history.jsonl`` is the write-ahead log of promotions and rollbacks: an
event is appended and fsynced (the commit point) before ``promoted.json``
changes, so a process killed in between leaves a history one step ahead of
the pointer, and :meth:`Checkpoints.recover` (run before every promotion and
rollback, and by ``mindloop doctor``) rolls the pointer forward. A line torn
by a kill is not an event: it is ignored when reading and cut off before the
next append.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from mindloop.graph.salvage import fsync_dir
from mindloop.trainer.errors import CheckpointError

__all__ = ["Checkpoints", "PROMOTED", "WEIGHT_FILES", "checkpoint_id_for"]

PROMOTED = "promoted.json"
# The files a checkpoint of each kind holds (the doctor checks them too: checkpoint_check.py).
WEIGHT_FILES = {"lora": ("adapter_model.safetensors", "adapter_config.json"), "full": ("model.safetensors", "config.json")}


def checkpoint_id_for(run_id: str) -> str:
    """The id of the checkpoint a run writes: ``run_X`` writes ``ckpt_X``.

    >>> checkpoint_id_for("run_20261208-011200_a1b2c3")
    'ckpt_20261208-011200_a1b2c3'
    """
    return "ckpt_" + run_id.removeprefix("run_")


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Checkpoints:
    """The checkpoints folder of one data directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- writing -----------------------------------------------------------------

    def write(self, checkpoint_id: str, save: Callable[[Path], None], manifest: dict[str, Any]) -> Path:
        """Call ``save(folder)`` on a temporary folder, add the manifest, fsync, then rename into place."""
        if manifest.get("kind") not in WEIGHT_FILES:
            raise CheckpointError(f"manifest kind {manifest.get('kind')!r} is not 'lora' or 'full'")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / checkpoint_id
        if final.exists():
            raise CheckpointError(f"checkpoint {checkpoint_id} already exists")
        tmp = self.root / f".tmp-{checkpoint_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save(tmp)
            missing = [f for f in WEIGHT_FILES[manifest["kind"]] if not (tmp / f).exists()]
            if missing:
                raise CheckpointError(f"the {manifest['kind']} checkpoint was saved without {', '.join(missing)}")
            (tmp / "manifest.json").write_text(json.dumps({**manifest, "id": checkpoint_id}, indent=2), "utf-8")
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def clean(self) -> list[str]:
        """Remove the temporary folders of runs that were killed while saving."""
        gone = []
        if self.root.exists():
            for d in self.root.glob(".tmp-*"):
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
        return gone

    # -- reading -----------------------------------------------------------------

    def get(self, checkpoint_id: str) -> dict[str, Any]:
        """The manifest of a whole, readable checkpoint; :class:`CheckpointError` otherwise."""
        if checkpoint_id.startswith(".") or "/" in checkpoint_id:
            raise CheckpointError(f"{checkpoint_id!r} is not a checkpoint id")
        folder = self.root / checkpoint_id
        if not folder.is_dir():
            known = ", ".join(m["id"] for m in self.list()) or "none"
            raise CheckpointError(f"no checkpoint {checkpoint_id!r} in {self.root}; checkpoints: {known}")
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            kind = manifest["kind"]
            files = WEIGHT_FILES[kind]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {checkpoint_id}: unreadable manifest ({e})") from None
        for name in files:
            if not (folder / name).exists():
                raise CheckpointError(f"checkpoint {checkpoint_id}: {name} is missing")
        try:
            from safetensors import safe_open

            with safe_open(str(folder / files[0]), framework="pt") as fh:
                fh.keys()
        except Exception as e:  # a truncated or overwritten weights file
            raise CheckpointError(f"checkpoint {checkpoint_id}: {files[0]} is corrupt ({e})") from None
        return manifest

    def list(self) -> list[dict[str, Any]]:
        """Manifests of every checkpoint, oldest first (unreadable ones are listed with an ``error``)."""
        out = []
        if not self.root.exists():
            return out
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            try:
                out.append(self.get(d.name))
            except CheckpointError as e:
                out.append({"id": d.name, "error": str(e)})
        return sorted(out, key=lambda m: m.get("created", 0))

    def promoted(self) -> dict[str, Any] | None:
        """The promoted pointer, or None when the base model is served."""
        try:
            return json.loads((self.root / PROMOTED).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise CheckpointError(f"{self.root / PROMOTED} is not valid JSON: {e}") from None

    def history(self) -> list[dict[str, Any]]:
        """Every committed promotion and rollback, oldest first (a torn last line is not one)."""
        path = self.root / "history.jsonl"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        events = []
        for n, line in enumerate(text[:text.rfind("\n") + 1].splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                raise CheckpointError(f"{path}: line {n} is not valid JSON; `mindloop doctor` reports it") from None
        return events

    # -- promoting ---------------------------------------------------------------

    def _record(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append ``event`` to the history and fsync it: once this returns, the event has happened."""
        path = self.root / "history.jsonl"
        events = self.history()
        event = {**event, "seq": len(events) + 1, "at": time.time()}
        with open(path, "a+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(max(0, size - 65536))
                tail = fh.read()
                if not tail.endswith(b"\n"):  # a line torn by a kill: cut it off
                    fh.truncate(size - (len(tail) - tail.rfind(b"\n") - 1))
            fh.seek(0, os.SEEK_END)
            fh.write((json.dumps(event) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        return event

    def _apply(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Make ``promoted.json`` what ``event`` left in use; returns the pointer (None: the base model)."""
        target = event["checkpoint"] if event["event"] == "promote" else event.get("to")
        if target is None:
            try:
                (self.root / PROMOTED).unlink()
                fsync_dir(self.root)
            except FileNotFoundError:
                pass
            return None
        pointer = {"checkpoint": target, "path": target, "kind": event.get("kind", "lora"), "seq": event["seq"]}
        _write_json_atomic(self.root / PROMOTED, pointer)
        return pointer

    def recover(self) -> dict[str, Any] | None:
        """Roll ``promoted.json`` forward to the last committed event when a kill came between the two."""
        events = self.history()
        current = self.promoted()
        if not events:
            return current
        last = events[-1]
        target = last["checkpoint"] if last["event"] == "promote" else last.get("to")
        if (current["checkpoint"] if current else None) != target:
            return self._apply({**last, "seq": last.get("seq", len(events))})
        return current

    def promote(self, checkpoint_id: str, *, reason: str = "") -> dict[str, Any]:
        """Serve ``checkpoint_id`` from now on (after checking it is whole)."""
        manifest = self.get(checkpoint_id)
        previous = self.recover()
        event = self._record({"event": "promote", "checkpoint": checkpoint_id, "kind": manifest["kind"],
                              "previous": previous["checkpoint"] if previous else None, "reason": reason})
        return self._apply(event)

    def rollback(self, *, reason: str = "") -> dict[str, Any] | None:
        """Go back to the promoted checkpoint's parent (the base model when it has none). Returns the new pointer."""
        current = self.recover()
        if current is None:
            raise CheckpointError("nothing is promoted: the base model is already in use")
        parent, kind = None, "lora"
        try:
            parent = self.get(current["checkpoint"]).get("parent")
        except CheckpointError:
            pass  # a corrupt promoted checkpoint: fall back to the base model
        if parent:
            try:
                kind = self.get(parent)["kind"]
            except CheckpointError:
                parent = None  # its parent is gone or damaged: the base model is what is left
        event = self._record({"event": "rollback", "checkpoint": current["checkpoint"], "to": parent, "kind": kind,
                              "reason": reason})
        return self._apply(event)
