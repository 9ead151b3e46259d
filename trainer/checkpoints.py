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
chat model (``agents.backends.LocalBackend``) always reads a whole pointer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from trainer.errors import CheckpointError

__all__ = ["Checkpoints", "PROMOTED"]

PROMOTED = "promoted.json"
_WEIGHTS = {"lora": ("adapter_model.safetensors", "adapter_config.json"), "full": ("model.safetensors", "config.json")}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Checkpoints:
    """The checkpoints folder of one data directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- writing -----------------------------------------------------------------

    def write(self, checkpoint_id: str, save: Callable[[Path], None], manifest: dict[str, Any]) -> Path:
        """Call ``save(folder)`` on a temporary folder, add the manifest, fsync, then rename into place."""
        if manifest.get("kind") not in _WEIGHTS:
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
            missing = [f for f in _WEIGHTS[manifest["kind"]] if not (tmp / f).exists()]
            if missing:
                raise CheckpointError(f"the {manifest['kind']} checkpoint was saved without {', '.join(missing)}")
            (tmp / "manifest.json").write_text(json.dumps({**manifest, "id": checkpoint_id}, indent=2), "utf-8")
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(self.root)
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
            files = _WEIGHTS[kind]
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
        path = self.root / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- promoting ---------------------------------------------------------------

    def _record(self, event: dict[str, Any]) -> None:
        with open(self.root / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**event, "at": time.time()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def promote(self, checkpoint_id: str, *, reason: str = "") -> dict[str, Any]:
        """Serve ``checkpoint_id`` from now on (after checking it is whole)."""
        manifest = self.get(checkpoint_id)
        previous = self.promoted()
        pointer = {"checkpoint": checkpoint_id, "path": checkpoint_id, "kind": manifest["kind"]}
        _write_json_atomic(self.root / PROMOTED, pointer)
        self._record({"event": "promote", "checkpoint": checkpoint_id,
                      "previous": previous["checkpoint"] if previous else None, "reason": reason})
        return pointer

    def rollback(self, *, reason: str = "") -> dict[str, Any] | None:
        """Go back to the promoted checkpoint's parent (the base model when it has none). Returns the new pointer."""
        current = self.promoted()
        if current is None:
            raise CheckpointError("nothing is promoted: the base model is already in use")
        parent = None
        try:
            parent = self.get(current["checkpoint"]).get("parent")
        except CheckpointError:
            pass  # a corrupt promoted checkpoint: fall back to the base model
        if parent:
            pointer = self.promote(parent, reason=f"rollback of {current['checkpoint']}: {reason}")
        else:
            (self.root / PROMOTED).unlink()
            _fsync_dir(self.root)
            pointer = None
        self._record({"event": "rollback", "checkpoint": current["checkpoint"], "to": parent, "reason": reason})
        return pointer
