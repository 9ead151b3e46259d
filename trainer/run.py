"""A training run: checks, evaluation before, the update (TRL), evaluation after, an atomic checkpoint.

    mindloop train --dataset data/p.jsonl                  # sft, LoRA, lr 1e-4, context-frozen, 1 epoch
    mindloop train --pattern P --objective dpo --method full --lr 1e-5

or, from Python, :func:`train` with a :class:`TrainConfig` and rows from
:mod:`mindloop.trainer.data`. The same code runs under ``accelerate launch`` (DDP,
FSDP, DeepSpeed): it is transformers' ``Trainer`` underneath, through TRL's
``SFTTrainer`` (our context-frozen loss replaces its ``compute_loss``),
``DPOTrainer`` and ``KTOTrainer``.

Each run writes ``runs/<id>/``: ``config.json``, ``steps.jsonl`` (one line
per logged step), ``loss.png``, ``metrics.json`` (before and after),
``versions.json`` and ``status``; and, when it succeeds, a checkpoint
(:mod:`mindloop.trainer.checkpoints`) whose manifest names its parent (the checkpoint
promoted when the run started). Every check that can fail (the data, the
lengths, the chat template, the parent checkpoint) runs before the first
step; a failed or killed run writes nothing under ``checkpoints/``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mindloop.trainer.checkpoints import Checkpoints, checkpoint_id_for
from mindloop.trainer.data import OBJECTIVES, check_lengths, data_hash
from mindloop.trainer.errors import InvalidDataset, TrainerError
from mindloop.trainer.evaluate import Probe, builtin_probes, evaluate, probes_digest, steering_direction
from mindloop.trainer.frozen import CONTEXT_DTYPES, frozen_batch_loss, resolve_context_dtype
from mindloop.trainer.model import check_chat_template, load_model, model_name

__all__ = ["DEFAULT_LR", "LR_RANGE", "TrainConfig", "TrainResult", "train", "record_run", "recover_runs",
           "result_from_disk"]

log = logging.getLogger(__name__)

# The learning rate of each method when none is set, and the range a pattern's plan may grow or shrink it in
# (docs/trainer.md): LoRA needs about ten times full weights'.
DEFAULT_LR = {"lora": 1e-4, "full": 1e-5}
LR_RANGE = {"lora": (1e-5, 1e-3), "full": (1e-6, 1e-4)}


def _lr_text(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")  # 1e-4, as the docs write it


@dataclass
class TrainConfig:
    """Settings of a training run. Section ``[train]`` of config.toml; flags of ``mindloop train``."""

    objective: str = field(default="sft", metadata={"help": "sft | dpo | kto", "choices": OBJECTIVES})
    method: str = field(default="lora", metadata={"help": "lora (a PEFT adapter) | full (all weights)",
                                                   "choices": ("lora", "full")})
    optimizer: str = field(default="adamw", metadata={
        "choices": ("adamw", "apollo"),
        "help": "adamw | apollo (needs the [apollo] extra; CC-BY-NC licence, so only when asked for)"})
    lr: float | None = field(default=None, metadata={
        "help": f"learning rate; unset = {_lr_text(DEFAULT_LR['lora'])} for lora, "
                f"{_lr_text(DEFAULT_LR['full'])} for full"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data"})
    context_frozen: bool = field(default=True, metadata={
        "help": "sft only: run the prompt without gradient and backpropagate through the response only"})
    context_dtype: str = field(default="auto", metadata={
        "choices": CONTEXT_DTYPES,
        "help": "dtype of the context-frozen prompt pass: auto (bfloat16 for a float32 model on a CPU with native "
                "bfloat16, else the model's) | model (exact) | bfloat16"})
    step_in_backward: bool = field(default=False, metadata={
        "help": "full only: each weight's AdamW step runs inside backward and its gradient is freed at once "
                "(no gradient clipping or accumulation; one process)"})
    model: str = field(default="bundled", metadata={"help": "'bundled' (SmolLM2-135M-Instruct), a model id or path"})
    batch_size: int = field(default=4, metadata={"help": "examples per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "steps accumulated per optimizer update"})
    max_length: int = field(default=1024, metadata={"help": "longest example in tokens; longer is an error"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps; -1 = run the epochs"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    beta: float = field(default=0.1, metadata={"help": "dpo/kto: strength of the pull towards the reference"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    evaluate: bool = field(default=True, metadata={"help": "evaluate before and after (probes, perplexity, ...)"})

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidDataset(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.method not in ("lora", "full"):
            raise InvalidDataset(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.optimizer not in ("adamw", "apollo"):
            raise InvalidDataset(f"optimizer must be 'adamw' or 'apollo', got {self.optimizer!r}")
        if self.context_dtype not in CONTEXT_DTYPES:
            raise InvalidDataset(f"context dtype must be one of {', '.join(CONTEXT_DTYPES)}, "
                                 f"got {self.context_dtype!r}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise InvalidDataset(f"lr must be between 0 and 1, got {self.lr}")
        if self.epochs <= 0 or self.batch_size < 1 or self.grad_accum < 1 or self.max_length < 2:
            raise InvalidDataset("epochs must be positive; batch size and grad accumulation at least 1; "
                                 "max length at least 2")
        if self.step_in_backward:
            from mindloop.trainer.optim import check_step_in_backward

            check_step_in_backward(method=self.method, grad_accum=self.grad_accum, optimizer=self.optimizer)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def frozen(self) -> bool:
        return self.context_frozen and self.objective == "sft"


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    checkpoint: str | None
    checkpoint_dir: Path | None
    parent: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    steps: list[dict[str, Any]]
    data_hash: str
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run_id, "run_dir": str(self.run_dir), "checkpoint": self.checkpoint,
                "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None, "parent": self.parent,
                "before": self.before, "after": self.after, "steps": len(self.steps), "data_hash": self.data_hash,
                "final_loss": self.steps[-1].get("loss") if self.steps else None, "config": self.config}


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__, "platform": platform.platform()}


def _sft_trainer_class():
    from trl import SFTTrainer

    class ContextFrozenSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer with the context-frozen response loss (:func:`mindloop.trainer.frozen.frozen_batch_loss`)."""

        def __init__(self, *args, context_frozen: bool = True, context_dtype: str = "auto", **kw) -> None:
            super().__init__(*args, **kw)
            self.context_frozen = context_frozen
            self.context_dtype = context_dtype

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.context_frozen:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            ids, labels = inputs["input_ids"], inputs["labels"]
            mask = inputs.get("attention_mask")
            prompts, responses = [], []
            for i in range(ids.shape[0]):
                keep = mask[i].bool() if mask is not None else ids[i] == ids[i]
                row, lab = ids[i][keep], labels[i][keep]
                answer = (lab != -100).nonzero()
                if len(answer) == 0:
                    continue
                start = int(answer[0])
                prompts.append(row[:start])
                responses.append(row[start:][lab[start:] != -100])
            pad = self.processing_class.pad_token_id or 0
            total, n = frozen_batch_loss(model, prompts, responses, pad_id=pad,
                                         context_dtype=resolve_context_dtype(model, self.context_dtype))
            denom = num_items_in_batch if num_items_in_batch is not None else n
            loss = total / max(int(denom), 1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return ContextFrozenSFTTrainer


class _StepLog:
    """A transformers callback writing each logged step to ``steps.jsonl``."""

    def __new__(cls, path: Path, steps: list):
        from transformers import TrainerCallback

        class StepLog(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs and state.is_world_process_zero:  # not the end-of-training summary
                    row = {"step": state.global_step, **{k: v for k, v in logs.items()
                                                          if isinstance(v, (int, float))}}
                    steps.append(row)
                    with open(path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")

        return StepLog()


def _loss_curve(steps: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s["step"] for s in steps if "loss" in s]
    ys = [s["loss"] for s in steps if "loss" in s]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _status(run_dir: Path, text: str) -> None:
    """Replace the run's ``status`` file whole (a kill never leaves it empty or half-written)."""
    tmp = run_dir / ".status.tmp"
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "status")


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def train(config: TrainConfig, rows: Sequence[dict[str, Any]], *, home: str | os.PathLike,
          probes: Sequence[Probe] | None = None, progress: bool = True, run_id: str | None = None,
          on_checkpoint: Callable[[str, dict], None] | None = None, tags: dict[str, Any] | None = None,
          before: dict[str, Any] | None = None) -> TrainResult:
    """Run one training run on ``rows`` (see :mod:`mindloop.trainer.data`) and write a checkpoint under ``home``.

    ``probes`` are evaluated before and after (default: the built-in sets;
    the caller adds the pattern's held-out examples). ``on_checkpoint`` is
    called with the new checkpoint's id and manifest once it is in place.
    ``tags`` (for example ``{"pattern": id}``) go into the run's config and
    the checkpoint's manifest. ``before``: an evaluation of the parent the
    caller already has (the ``after`` of the run that made it); it is used
    instead of evaluating the parent again when it was made on the same
    probes (:func:`~mindloop.trainer.evaluate.probes_digest`) of the same checkpoint,
    without its steering readout (this run's direction is its own).
    """
    import torch

    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    home = Path(home)
    if not rows:
        raise InvalidDataset("the dataset is empty")
    # one process, or one of several under `accelerate launch` (gloo on CPUs, like the Trainer's own)
    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    store = Checkpoints(home / "checkpoints")
    if main:
        store.clean()
    current = store.promoted()
    parent = current["checkpoint"] if current else None
    parent_dir = store.root / parent if parent else None
    if parent:
        parent_manifest = store.get(parent)
        if parent_manifest.get("base_model", model_name(config.model)) != model_name(config.model):
            raise TrainerError(f"the promoted checkpoint {parent} was trained from "
                               f"{parent_manifest.get('base_model')!r}, not {model_name(config.model)!r}")
    model, tok = load_model(config.model, checkpoint=parent_dir)
    check_chat_template(tok, config.model)
    check_lengths(rows, tok, config.max_length)
    if config.optimizer == "apollo":
        try:
            import apollo_torch  # noqa: F401
        except ImportError:
            raise TrainerError("--optimizer apollo needs the apollo extra: pip install 'mindloop[apollo]' "
                               "(apollo-torch, CC-BY-NC licence)") from None

    run_id = run_id or f"run_{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}"
    if state.num_processes > 1:  # every process uses the main process's run id
        box = [run_id]
        broadcast_object_list(box)
        run_id = box[0]
    run_dir = home / "runs" / run_id
    checkpoint_id = checkpoint_id_for(run_id)
    digest = data_hash(rows)
    used = resolve_context_dtype(model, config.context_dtype) if config.frozen else None
    cfg = {**asdict(config), "learning_rate": config.learning_rate, "context_frozen": config.frozen,
           "context_dtype_used": str(used or next(model.parameters()).dtype).removeprefix("torch."),
           "examples": len(rows), "data_hash": digest, "parent": parent, "processes": state.num_processes,
           **(tags or {})}
    if main:
        run_dir.mkdir(parents=True, exist_ok=False)
        _write(run_dir / "config.json", cfg)
        _write(run_dir / "versions.json", _versions())
        _write(run_dir / "examples.json", [r.get("id") for r in rows])  # for trained_on edges after a kill
        _status(run_dir, f"started pid={os.getpid()}")
    torch.manual_seed(config.seed)

    probes = list(probes) if probes is not None else builtin_probes()
    known, before, after = before, None, None
    direction = None
    targets = [p for p in probes if p.kind == "target"]
    if config.evaluate and main:
        if targets:
            direction = steering_direction(model, tok, targets)
        if known and known.get("probes") == probes_digest(probes) and known.get("checkpoint") == parent:
            before = {k: v for k, v in known.items() if k not in ("steering", "attention_mass")}
        else:
            before = evaluate(model, tok, probes, checkpoint=parent, direction=direction)

    steps: list[dict[str, Any]] = []
    try:
        trainer = _build_trainer(config, model, tok, rows, run_dir, progress, steps)
        if not progress:  # without progress bars transformers prints each log dict to stdout; ours go to steps.jsonl
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        trainer.train()
        model = trainer.model
        if config.evaluate and main:
            after = evaluate(model, tok, probes, checkpoint=checkpoint_id, direction=direction)
        if steps and main:
            _loss_curve(steps, run_dir / "loss.png", f"{run_id} ({config.objective}, {config.method}, "
                                                      f"lr {config.learning_rate:g})")
        if main:
            _write(run_dir / "metrics.json", {"before": before, "after": after})
        kind = "lora" if config.method == "lora" else "full"
        manifest = {"kind": kind, "base_model": model_name(config.model), "base_source": config.model,
                    "parent": parent, "run": run_id,
                    "data_hash": digest, "objective": config.objective, "created": time.time(), **(tags or {}),
                    "metrics": {"before": before, "after": after}}

        def save(folder: Path) -> None:
            if kind == "lora":
                model.save_pretrained(str(folder))
            else:
                target = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
                target.save_pretrained(str(folder), safe_serialization=True)
                tok.save_pretrained(str(folder))

        ckpt_dir = store.root / checkpoint_id
        if main:
            store.write(checkpoint_id, save, manifest)
            _status(run_dir, "finished")
        state.wait_for_everyone()
    except BaseException as e:
        if main and run_dir.exists():
            _status(run_dir, f"failed: {type(e).__name__}: {e}")
        raise
    if on_checkpoint is not None:
        on_checkpoint(checkpoint_id, manifest)
    return TrainResult(run_id=run_id, run_dir=run_dir, checkpoint=checkpoint_id, checkpoint_dir=ckpt_dir,
                       parent=parent, before=before, after=after, steps=steps, data_hash=digest, config=cfg)


def _build_trainer(config: TrainConfig, model, tok, rows, run_dir: Path, progress: bool, steps: list):
    import torch
    from datasets import Dataset

    cuda = torch.cuda.is_available()
    common = dict(output_dir=str(run_dir / "trainer"), num_train_epochs=config.epochs, max_steps=config.max_steps,
                  learning_rate=config.learning_rate, per_device_train_batch_size=config.batch_size,
                  gradient_accumulation_steps=config.grad_accum, logging_steps=1, save_strategy="no",
                  report_to=[], seed=config.seed, disable_tqdm=not progress, use_cpu=not cuda, bf16=cuda,
                  optim="apollo_adamw" if config.optimizer == "apollo" else "adamw_torch",
                  lr_scheduler_type="constant", max_length=config.max_length,
                  # the frozen loss runs the response on the prompt's KV cache, which gradient
                  # checkpointing turns off; it saves the memory checkpointing would have saved anyway
                  activation_checkpointing=not config.frozen)
    if config.step_in_backward:  # no global gradient norm ever exists: the hooks free each gradient as they step
        common["max_grad_norm"] = 0.0
    peft_config = None
    if config.method == "lora":
        from peft import LoraConfig, PeftModel

        if isinstance(model, PeftModel):  # continuing from a promoted adapter: train it further
            model.train()
        else:
            peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                     target_modules="all-linear", task_type="CAUSAL_LM")
    elif hasattr(model, "merge_and_unload"):  # full fine-tune on top of an adapter: fold it in first
        model = model.merge_and_unload()
    data = Dataset.from_list([{k: v for k, v in r.items() if k != "id"} for r in rows])
    callbacks = [_StepLog(run_dir / "steps.jsonl", steps)]
    if config.objective == "sft":
        from trl import SFTConfig

        args = SFTConfig(**common, completion_only_loss=True)
        return _sft_trainer_class()(model=model, args=args, train_dataset=data, processing_class=tok,
                                    peft_config=peft_config, callbacks=callbacks, context_frozen=config.frozen,
                                    context_dtype=config.context_dtype, optimizers=_optimizers(config, model, args))
    if config.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=config.beta)
        return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config,
                          callbacks=callbacks, optimizers=_optimizers(config, model, args))
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(**common, beta=config.beta)
    return KTOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config,
                      callbacks=callbacks, optimizers=_optimizers(config, model, args))


def _optimizers(config: TrainConfig, model, args) -> tuple:
    """The ``optimizers`` argument of a ``Trainer``: (None, None) lets it build its own AdamW."""
    if not config.step_in_backward:
        return (None, None)
    from mindloop.trainer.optim import StepInBackward

    return (StepInBackward(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                           eps=args.adam_epsilon, weight_decay=args.weight_decay), None)


def result_from_disk(home: str | os.PathLike, checkpoint_id: str) -> TrainResult:
    """The :class:`TrainResult` of a finished run, read back from its checkpoint's manifest and its run folder."""
    home = Path(home)
    store = Checkpoints(home / "checkpoints")
    manifest = store.get(checkpoint_id)
    run_dir = home / "runs" / manifest["run"]
    cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    metrics = manifest.get("metrics") or {}
    steps_file = run_dir / "steps.jsonl"
    steps = [json.loads(line) for line in steps_file.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if steps_file.exists() else []
    return TrainResult(run_id=manifest["run"], run_dir=run_dir, checkpoint=checkpoint_id,
                       checkpoint_dir=store.root / checkpoint_id, parent=manifest.get("parent"),
                       before=metrics.get("before"), after=metrics.get("after"), steps=steps,
                       data_hash=manifest.get("data_hash", ""), config=cfg)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_runs(graph, home: str | os.PathLike, *, scope: str | None = None) -> list[dict[str, str]]:
    """Finish the records of runs whose process was killed; returns what was done, one dict per run.

    A run folder whose status is still ``started`` and whose process is gone
    was killed: when its checkpoint is in place the run had finished (it died
    between the rename and the status), so it becomes ``finished``; else
    ``failed``. Every finished or failed run gets its graph records (``Run``,
    and for a finished one its ``Checkpoint``, ``Eval`` nodes and
    ``trained_on`` edges, from ``examples.json``) when a kill came before
    :func:`record_run`. Runs still running are left alone.
    """
    from mindloop.graph import NodeNotFound, Run

    home = Path(home)
    store = Checkpoints(home / "checkpoints")
    done = []
    runs = home / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        status_file = run_dir / "status"
        if not (run_dir / "config.json").exists():
            continue  # killed before it wrote its config: nothing to record
        status = (status_file.read_text(encoding="utf-8").strip() if status_file.exists() else "") or "started"
        checkpoint_id = checkpoint_id_for(run_dir.name)
        if status.startswith("started"):
            pid = status.partition("pid=")[2]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if (store.root / checkpoint_id).is_dir():
                status = "finished"
            else:
                status = "failed: killed before it finished (no checkpoint was written)"
            _status(run_dir, status)
            done.append({"run": run_dir.name, "status": status})
        try:
            graph.get(run_dir.name)
            continue
        except NodeNotFound:
            pass
        if status.startswith("finished"):
            ids_file = run_dir / "examples.json"
            ids = [i for i in json.loads(ids_file.read_text(encoding="utf-8")) if i] if ids_file.exists() else []
            record_run(graph, result_from_disk(home, checkpoint_id), scope=scope, example_ids=ids)
            done.append({"run": run_dir.name, "status": "recorded"})
        else:
            cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
            graph.add(Run(scope=graph.resolve_scope(scope), id=run_dir.name, status="failed",
                          objective=cfg.get("objective", ""), method=cfg.get("method", ""),
                          base_model=model_name(cfg["model"]) if cfg.get("model") else "",
                          config={**cfg, "error": status.removeprefix("failed: ")}, finished=time.time()))
            done.append({"run": run_dir.name, "status": "recorded failed"})
    return done


def record_run(graph, result: TrainResult, *, scope: str | None = None, example_ids: Sequence[str] = ()) -> dict:
    """Write the run, its checkpoint and its evaluations into the memory graph.

    Nodes: ``Run`` (config, final metrics), ``Checkpoint`` (path, parent, manifest),
    ``Eval`` before and after. Edges: ``trained_on`` (run -> each example),
    ``produced`` (run -> checkpoint), ``evaluated`` (eval -> the checkpoint it measured).
    """
    from mindloop.graph import Checkpoint, Eval, NodeNotFound, Run

    scope = graph.resolve_scope(scope)
    cfg = result.config
    run = Run(scope=scope, id=result.run_id, objective=cfg["objective"], method=cfg["method"], status="finished",
              base_model=model_name(cfg["model"]), config=cfg, finished=time.time(),
              metrics={"before": result.before, "after": result.after,
                       "final_loss": result.steps[-1].get("loss") if result.steps else None})
    with graph.transaction():
        graph.add(run)
        for eid in example_ids:
            try:
                graph.get(eid, scope)
            except NodeNotFound:
                continue
            graph.link(run.id, eid, "trained_on")
        ckpt = Checkpoint(scope=scope, id=result.checkpoint, path=str(result.checkpoint_dir), parent=result.parent,
                          base_model=run.base_model, status="candidate",
                          manifest={"run": result.run_id, "data_hash": result.data_hash,
                                    **{k: cfg[k] for k in ("pattern", "accept_examples", "flags") if k in cfg}})
        graph.add(ckpt, [(run.id, ckpt.id, "produced")])
        for when, metrics, target in (("before", result.before, result.parent), ("after", result.after, ckpt.id)):
            if metrics is None:
                continue
            ev = Eval(scope=scope, checkpoint=target, probes=f"{when} {result.run_id}", metrics=metrics)
            graph.add(ev)
            if target is not None:
                try:
                    graph.get(target, scope)
                    graph.link(ev.id, target, "evaluated")
                except NodeNotFound:
                    pass
    return {"run": run.id, "checkpoint": ckpt.id}
