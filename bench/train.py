"""Benchmark of the trainer on the CPU with the bundled SmolLM2-135M-Instruct (not a test).

Two measurements, in one run:

1. **Context-frozen vs ordinary response-only backprop** (:mod:`mindloop.trainer.frozen`)
   at prompt/response lengths 256/64, 512/64 and 1024/64: the full model
   (float32, every weight trainable, ``model.train()``), batch size 1, random
   token ids from the model's vocabulary (seeded). One step is the loss
   (``frozen_response_loss`` or ``ordinary_response_loss``) plus
   ``backward()``, then ``zero_grad(set_to_none=True)``; no optimizer. After
   one warm-up step, the median of the measured steps is reported, and the
   ratios ordinary / frozen (higher is better). Targets at 1024/64: >= 4x
   faster (``frozen_speedup_1024``) and >= 3x less peak memory
   (``frozen_mem_ratio_1024``). The 1024/64 pair runs again with LoRA, the
   default method of ``mindloop train`` (``frozen_speedup_1024_lora``,
   ``frozen_mem_ratio_1024_lora``). "Frozen" is the step as ``mindloop train``
   runs it: its context dtype ``auto`` runs the no-grad context pass under
   bfloat16 autocast on a CPU with native bfloat16 (AVX512-BF16 or AMX), in
   float32 elsewhere; the response part runs in float32 either way. The
   frozen step with the context in float32 (``context_dtype="model"``, logits
   equal to the ordinary forward's) is measured too: ``speedup_exact``,
   ``frozen_speedup_1024_exact``. The 1024/64 pair runs a third time with full
   weights and AdamW stepped inside backward (:mod:`mindloop.trainer.optim`, ``mindloop
   train --method full --step-in-backward``), where no weight keeps its
   gradient past its own step: ``frozen_mem_ratio_1024_step_in_backward``
   compares the steady-state step peaks (``step_peak_mb``, below), because
   the warm-up step allocates AdamW's state.

   **Peak memory** is the resident set of a fresh process: every
   (length, loss) pair runs in its own subprocess, which loads the model,
   builds the ids, runs ``gc.collect()`` and glibc's ``malloc_trim(0)`` (so
   memory freed while loading is handed back and cannot hide the step's own
   growth; the weights are first copied out of the memory-mapped model cache,
   whose page-ins would otherwise count as the first step's), reads ``VmRSS`` as the baseline, then resets the kernel's
   high-water mark (writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0)
   so the model load's own peak does not count. After the warm-up and the
   measured steps it reads ``VmHWM``: peak memory = ``VmHWM - baseline``,
   i.e. everything a step touches on top of the loaded model (activations,
   the saved tensors of autograd, logits, the KV cache, the gradients of all
   weights, allocator slack). The kernel tracks the high-water mark page by
   page, so no short-lived peak is missed, unlike sampling; tracemalloc does
   not see torch's allocations at all. Also reported: the figure without
   the gradients of the weights (the same 513 MiB for both losses), and
   ``step_peak_mb``, the same measurement restarted after the warm-up step
   (what a steady-state step needs on top of what the warm-up kept).

2. **Our SFT step vs TRL's** on the same data and model: TRL's
   ``SFTTrainer`` with ``completion_only_loss=True``, and ours
   (``mindloop.trainer.run._sft_trainer_class()``) with ``context_frozen=False`` (the
   path that defers to TRL's loss), on 16 conversational prompt/completion
   rows (~200-token prompts, seeded), the same ``SFTConfig`` for both:
   ``use_cpu=True``, ``per_device_train_batch_size=2``, ``max_steps`` 6
   (quick: 3), ``learning_rate=1e-5``, constant schedule, AdamW,
   ``gradient_checkpointing=False``, ``logging_steps=1``, no saving, no
   reporting. A ``TrainerCallback`` takes the time at ``on_step_begin`` and
   ``on_step_end`` (forward, backward, optimizer step); the first step is
   dropped as warm-up and the medians are compared: ``sft_vs_trl_time_ratio``
   = ours / TRL (target <= 1.1). Ours with ``context_frozen=True`` (the
   default of ``mindloop train``) is reported beside it as
   ``frozen_sft_vs_trl_time_ratio``. Each trainer runs in its own
   subprocess; the full mode runs four rounds, every other one in reverse
   order, and pools their steps. Every run sees the same batches in the same
   order, so ``sft_vs_trl_paired_ratio`` (the median of ours / TRL step by
   step, same round) is reported too.

Commands (from the repository root):

    .venv/bin/python bench/train.py --quick          # ~5 min on 2 CPU cores: 3 measured steps, 1 SFT round
    .venv/bin/python bench/train.py                  # ~10 min on 2 CPU cores: 5 measured steps, 4 SFT rounds
    .venv/bin/python bench/train.py --quick --json   # one JSON object on stdout; progress goes to stderr

Figures, machine and analysis: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]

LENGTHS = ((256, 64), (512, 64), (1024, 64))
TARGETS = {  # metric: (comparison, target)
    "frozen_speedup_1024": (">=", 4.0),
    "frozen_mem_ratio_1024": (">=", 3.0),
    "sft_vs_trl_time_ratio": ("<=", 1.1),
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- memory, from the kernel ------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _settle() -> None:
    """Collect garbage and hand freed heap back to the kernel, so the next baseline is the real floor."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> int:
    """Reset the kernel's RSS high-water mark to the current RSS; return that RSS in kB."""
    _settle()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kb("VmRSS")


def _load():
    import torch

    from mindloop.trainer.model import load_model

    torch.manual_seed(0)
    model, tok = load_model("bundled", device="cpu", dtype=torch.float32)
    # the de-quantized cache (mindloop.trainer.model.bundled_cache) is memory-mapped: its pages would fault in during the
    # first step and count as the step's memory. Copies in ordinary memory belong to the baseline.
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
    return model, tok


# -- worker 1: one (length, loss) pair in a fresh process -------------------------


def worker_backprop(mode: str, prompt_len: int, response_len: int, steps: int, method: str = "full") -> dict:
    import torch

    from mindloop.trainer.frozen import frozen_response_loss, ordinary_response_loss, resolve_context_dtype

    model, _ = _load()
    if method == "lora":  # what `mindloop train` does by default: TrainConfig's rank, alpha and target modules
        from peft import LoraConfig, get_peft_model

        from mindloop.trainer.run import TrainConfig

        cfg = TrainConfig()
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    sib = None
    if method == "step_in_backward":  # `mindloop train --method full --step-in-backward`: AdamW steps in the hooks
        from mindloop.trainer.optim import StepInBackward

        sib = StepInBackward(model.parameters(), lr=1e-5)
    model.train()
    gen = torch.Generator().manual_seed(prompt_len * 1000 + response_len)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=gen)
    response = torch.randint(0, vocab, (1, response_len), generator=gen)
    # "frozen": as `mindloop train` runs it (context dtype "auto": bfloat16 on a CPU with native bfloat16);
    # "frozen_exact": the context in the model's float32, logits equal to the ordinary forward's
    ctx_dtype = resolve_context_dtype(model, "auto" if mode == "frozen" else "model")

    def loss_fn(*a):
        if mode == "ordinary":
            return ordinary_response_loss(model, *a)
        return frozen_response_loss(model, *a, context_dtype=ctx_dtype)
    grad_kb = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) // 1024

    cpu: list[float] = []

    def step() -> float:
        t, c = time.perf_counter(), time.process_time()
        loss = loss_fn(prompt, response)
        loss.backward()
        if sib is not None:
            sib.step()  # what the Trainer calls: a no-op, every weight stepped inside backward()
        dt = time.perf_counter() - t
        cpu.append((time.process_time() - c) / dt)
        model.zero_grad(set_to_none=True)
        return dt

    base_kb = _reset_peak()
    warm = step()
    peak_kb = _status_kb("VmHWM") - base_kb
    warm_kb = _reset_peak()  # what the warm-up left behind for good (runtime caches, thread pools)
    times = [step() for _ in range(steps)]
    step_peak_kb = _status_kb("VmHWM") - warm_kb
    peak_kb = max(peak_kb, _status_kb("VmHWM") - base_kb)
    return {"mode": mode, "method": method, "context_dtype": str(ctx_dtype).removeprefix("torch."),
            "prompt": prompt_len, "response": response_len, "warmup_s": round(warm, 3),
            "step_s": [round(t, 4) for t in times], "median_s": round(statistics.median(times), 4),
            "cpu_per_wall": round(statistics.median(cpu[1:]), 2),
            "peak_mb": round(peak_kb / 1024, 1), "grads_mb": round(grad_kb / 1024, 1),
            "peak_without_grads_mb": round((peak_kb - grad_kb) / 1024, 1),
            "baseline_rss_mb": round(base_kb / 1024, 1), "kept_after_warmup_mb": round((warm_kb - base_kb) / 1024, 1),
            "step_peak_mb": round(step_peak_kb / 1024, 1)}


# -- worker 2: one SFT trainer in a fresh process ---------------------------------

_TOPICS = ("the deploy pipeline", "invoice exports", "the onboarding email", "unit tests", "the sales dashboard",
           "SQL migrations", "the mobile app", "API rate limits", "the quarterly report", "the team offsite",
           "Python type hints", "the data warehouse", "error messages", "the release notes", "code review",
           "the budget sheet")
_SENTENCES = ("We moved {t} to a new owner last month and nobody wrote down the steps.",
              "The last change to {t} broke two things that the tests did not cover.",
              "I would like {t} to stay readable for people who join the team later.",
              "Please keep the wording plain and avoid anything that sounds like marketing.",
              "Our manager asked for a short summary of {t} before Friday.",
              "The previous answer about {t} was too long and missed the main point.",
              "There is a checklist for {t} somewhere, but it is out of date.",
              "Two customers complained about {t} this week, both with screenshots.",
              "I tried to fix {t} myself, but the logs did not say much.",
              "Whatever you suggest has to work without new dependencies.")
_ANSWERS = ("Start with {t}: list what changed, who owns it now, and the one step that failed. "
            "Then add a test for that step and write the checklist down where the team can find it.",
            "For {t}, keep it short: one paragraph on the problem, one on the fix, and a line on what to "
            "watch next week. I left out everything that does not change a decision.",
            "Here is a plain plan for {t}: reproduce the failure, read the logs around it, fix the smallest "
            "thing that explains both complaints, and tell the customers what changed.")


def sft_rows(n: int = 16, seed: int = 0) -> list[dict]:
    """``n`` conversational prompt/completion rows: a system message, an earlier exchange, a long user turn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = _TOPICS[i % len(_TOPICS)]
        user = " ".join(rng.choice(_SENTENCES).format(t=t) for _ in range(8))
        earlier = " ".join(rng.choice(_SENTENCES).format(t=rng.choice(_TOPICS)) for _ in range(2))
        rows.append({"prompt": [{"role": "system", "content": "You are a concise assistant for a small team."},
                                {"role": "user", "content": earlier},
                                {"role": "assistant", "content": rng.choice(_ANSWERS).format(t=rng.choice(_TOPICS))},
                                {"role": "user", "content": user}],
                     "completion": [{"role": "assistant", "content": rng.choice(_ANSWERS).format(t=t)}]})
    return rows


def worker_sft(mode: str, max_steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from mindloop.trainer.run import _sft_trainer_class

    model, tok = _load()
    rows = sft_rows()
    prompt_tokens = [len(tok(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"]) for r in rows]
    completion_tokens = [len(tok(r["completion"][0]["content"])["input_ids"]) for r in rows]
    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"mindloop-bench-train-{os.getpid()}"
    args = SFTConfig(output_dir=str(out_dir), use_cpu=True, per_device_train_batch_size=2, max_steps=max_steps,
                     logging_steps=1, report_to=[], save_strategy="no", gradient_checkpointing=False,
                     learning_rate=1e-5, lr_scheduler_type="constant", optim="adamw_torch", seed=0,
                     completion_only_loss=True, max_length=1024, disable_tqdm=True, dataloader_num_workers=0)

    times: list[float] = []

    cpu: list[float] = []

    class StepTimer(TrainerCallback):
        t0 = c0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            cpu.append((time.process_time() - self.c0) / times[-1])

    data = Dataset.from_list(rows)
    if mode == "trl":
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             callbacks=[StepTimer()])
    else:
        trainer = _sft_trainer_class()(model=model, args=args, train_dataset=data, processing_class=tok,
                                       callbacks=[StepTimer()], context_frozen=(mode == "frozen"))
    trainer.remove_callback(PrinterCallback)
    torch.manual_seed(0)
    base_kb = _reset_peak()
    trainer.train()
    peak_kb = _status_kb("VmHWM") - base_kb
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    measured = times[1:]
    return {"mode": mode, "step_s": [round(t, 4) for t in times], "warmup_s": round(times[0], 3),
            "median_s": round(statistics.median(measured), 4) if measured else None,
            "cpu_per_wall": round(statistics.median(cpu[1:]), 2) if measured else None,
            "peak_mb": round(peak_kb / 1024, 1), "losses": [round(x, 4) for x in losses],
            "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1),
            "completion_tokens_mean": round(statistics.mean(completion_tokens), 1)}


# -- the parent: subprocesses, ratios, report --------------------------------------


def _spawn(*worker_args: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *worker_args]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(worker_args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_backprop(steps: int, lengths=LENGTHS, method: str = "full") -> dict:
    out = {}
    for p, r in lengths:
        pair = {}
        for mode in ("ordinary", "frozen", "frozen_exact"):
            t = time.perf_counter()
            pair[mode] = _spawn("backprop", mode, str(p), str(r), str(steps), method)
            _say(f"[backprop {p}/{r} {method}] {mode}: median {pair[mode]['median_s']:.3f}s/step, "
                 f"peak +{pair[mode]['peak_mb']:.0f} MB ({time.perf_counter() - t:.0f}s)")
        o, f, e = pair["ordinary"], pair["frozen"], pair["frozen_exact"]
        out[f"{p}/{r}"] = {
            "ordinary_s": o["median_s"], "frozen_s": f["median_s"],
            "speedup": round(o["median_s"] / f["median_s"], 3), "context_dtype": f["context_dtype"],
            "frozen_exact_s": e["median_s"], "speedup_exact": round(o["median_s"] / e["median_s"], 3),
            "frozen_exact_peak_mb": e["peak_mb"], "mem_ratio_exact": round(o["peak_mb"] / e["peak_mb"], 3),
            "ordinary_peak_mb": o["peak_mb"], "frozen_peak_mb": f["peak_mb"],
            "mem_ratio": round(o["peak_mb"] / f["peak_mb"], 3),
            "ordinary_peak_without_grads_mb": o["peak_without_grads_mb"],
            "frozen_peak_without_grads_mb": f["peak_without_grads_mb"],
            "mem_ratio_without_grads": round(o["peak_without_grads_mb"] / f["peak_without_grads_mb"], 3),
            "ordinary_step_peak_mb": o["step_peak_mb"], "frozen_step_peak_mb": f["step_peak_mb"],
            "mem_ratio_after_warmup": round(o["step_peak_mb"] / f["step_peak_mb"], 3),
            "ordinary_steps_s": o["step_s"], "frozen_steps_s": f["step_s"],
            "ordinary_warmup_s": o["warmup_s"], "frozen_warmup_s": f["warmup_s"],
            "ordinary_cpu_per_wall": o["cpu_per_wall"], "frozen_cpu_per_wall": f["cpu_per_wall"],
        }
    return out


def bench_sft(max_steps: int, rounds: int) -> dict:
    order = ["trl", "ours", "frozen"]
    runs: dict[str, list[dict]] = {m: [] for m in order}
    for k in range(rounds):
        for mode in (order if k % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            res = _spawn("sft", mode, str(max_steps))
            runs[mode].append(res)
            _say(f"[sft round {k + 1}] {mode}: steps {res['step_s']} (median after warm-up "
                 f"{res['median_s']:.3f}s), peak +{res['peak_mb']:.0f} MB ({time.perf_counter() - t:.0f}s)")
    med = {m: statistics.median([s for r in rs for s in r["step_s"][1:]]) for m, rs in runs.items()}
    # the same batches in the same order in every run: step i of ours against step i of TRL, same round
    paired = [o / t for ro, rt in zip(runs["ours"], runs["trl"]) for o, t in zip(ro["step_s"][1:], rt["step_s"][1:])]
    first = runs["trl"][0]
    return {
        "sft_trl_step_s": round(med["trl"], 4), "sft_ours_step_s": round(med["ours"], 4),
        "sft_frozen_step_s": round(med["frozen"], 4),
        "sft_vs_trl_time_ratio": round(med["ours"] / med["trl"], 3),
        "frozen_sft_vs_trl_time_ratio": round(med["frozen"] / med["trl"], 3),
        "sft_vs_trl_paired_ratio": round(statistics.median(paired), 3),
        "sft_peak_mb": {m: max(r["peak_mb"] for r in rs) for m, rs in runs.items()},
        "sft_losses": {m: rs[0]["losses"] for m, rs in runs.items()},
        "sft_steps_s": {m: [r["step_s"] for r in rs] for m, rs in runs.items()},
        "sft_cpu_per_wall": {m: [r["cpu_per_wall"] for r in rs] for m, rs in runs.items()},
        "sft_rows": 16, "sft_batch_size": 2, "sft_max_steps": max_steps, "sft_rounds": rounds,
        "sft_prompt_tokens_mean": first["prompt_tokens_mean"],
        "sft_completion_tokens_mean": first["completion_tokens_mean"],
    }


def _others_busy_cpus(seconds: float = 2.0) -> float | None:
    """CPUs kept busy by other processes, from /proc/stat over ``seconds`` while this one sleeps."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])  # idle + iowait, total (without guest time, counted in user)

    try:
        i0, t0 = sample()
        time.sleep(seconds)
        i1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round((1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1), 2)


def _machine() -> dict:
    import torch
    import transformers
    import trl

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None) \
        if os.path.exists("/proc/cpuinfo") else None
    ram = next((int(ln.split()[1]) / 1024 ** 2 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), None) \
        if os.path.exists("/proc/meminfo") else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu, "ram_gb": None if ram is None else round(ram, 1), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "trl": trl.__version__}


def _met(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    op, target = TARGETS[name]
    return "yes" if (value <= target if op == "<=" else value >= target) else "NO"


def _table(r: dict) -> str:
    lines = [f"command: {r['command']}", f"date: {r['date']}"]
    m = r["machine"]
    lines.append(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gb']} GB RAM, {m['platform']}; "
                 f"torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, "
                 f"trl {m['trl']}")
    lines.append(f"CPUs busy with other processes at the start: {r['others_busy_cpus_at_start']}; 1-minute load "
                 f"average {r['load_avg_1m'][0]} -> {r['load_avg_1m'][1]}; {r['wall_s']:.0f}s wall")
    lines.append("")
    lines.append(f"1. response-only backprop, bundled SmolLM2-135M float32, batch 1, median of "
                 f"{r['backprop_steps']} steps after 1 warm-up; peak = RSS high-water mark above the loaded model")
    lines.append(f"   frozen: as `mindloop train` runs it, the context pass in {r['context_dtype']} (context dtype auto); "
                 "exact: the context pass in float32")
    head = ("prompt/resp", "ordinary s", "frozen s", "speedup", "exact s", "speedup", "ordinary MB", "frozen MB",
            "mem ratio", "w/o grads", "CPU/wall")
    rows = [head]
    for k, v in [*r["lengths"].items(), ("1024/64 LoRA", r["lora_1024"])]:
        rows.append((k, f"{v['ordinary_s']:.3f}", f"{v['frozen_s']:.3f}", f"{v['speedup']:.2f}x",
                     f"{v['frozen_exact_s']:.3f}", f"{v['speedup_exact']:.2f}x",
                     f"{v['ordinary_peak_mb']:.0f}", f"{v['frozen_peak_mb']:.0f}", f"{v['mem_ratio']:.2f}x",
                     f"{v['mem_ratio_without_grads']:.2f}x",
                     f"{v['ordinary_cpu_per_wall']:.2f}/{v['frozen_cpu_per_wall']:.2f}"))
    w = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines += ["  ".join(c.rjust(x) for c, x in zip(row, w)) for row in rows]
    v, d = r["step_in_backward_1024"], r["lengths"]["1024/64"]
    lines.append(f"   steady-state step peak (MB above the model and what the warm-up left) at 1024/64, full "
                 f"weights: ordinary {d['ordinary_step_peak_mb']:.0f} / frozen {d['frozen_step_peak_mb']:.0f} "
                 f"= {d['mem_ratio_after_warmup']:.2f}x; with AdamW stepped inside backward (--step-in-backward): "
                 f"ordinary {v['ordinary_step_peak_mb']:.0f} / frozen {v['frozen_step_peak_mb']:.0f} = "
                 f"{v['mem_ratio_after_warmup']:.2f}x, {v['ordinary_s']:.3f} / {v['frozen_s']:.3f} s = "
                 f"{v['speedup']:.2f}x")
    lines.append("")
    lines.append(f"2. SFT step (forward + backward + AdamW), {r['sft_rows']} rows (~{r['sft_prompt_tokens_mean']:.0f}"
                 f"-token prompts, ~{r['sft_completion_tokens_mean']:.0f}-token completions), batch "
                 f"{r['sft_batch_size']}, max_steps {r['sft_max_steps']} x {r['sft_rounds']} round(s), "
                 f"first step of each run dropped")
    lines.append(f"   TRL SFTTrainer (completion-only): {r['sft_trl_step_s']:.3f}s/step, "
                 f"peak +{r['sft_peak_mb']['trl']:.0f} MB")
    lines.append(f"   ours, context_frozen=False:        {r['sft_ours_step_s']:.3f}s/step, "
                 f"peak +{r['sft_peak_mb']['ours']:.0f} MB")
    lines.append(f"   ours, context_frozen=True:         {r['sft_frozen_step_s']:.3f}s/step, "
                 f"peak +{r['sft_peak_mb']['frozen']:.0f} MB")
    lines.append("")
    t = [("metric", "value", "target", "met?"),
         ("frozen_speedup_1024 (ordinary / frozen time)", f"{r['frozen_speedup_1024']:.2f}", ">= 4",
          _met("frozen_speedup_1024", r["frozen_speedup_1024"])),
         ("  same, the context pass in float32 (exact)", f"{r['frozen_speedup_1024_exact']:.2f}", "", ""),
         ("frozen_mem_ratio_1024 (ordinary / frozen peak)", f"{r['frozen_mem_ratio_1024']:.2f}", ">= 3",
          _met("frozen_mem_ratio_1024", r["frozen_mem_ratio_1024"])),
         ("  same, LoRA (the default method)", f"{r['frozen_mem_ratio_1024_lora']:.2f}", ">= 3",
          _met("frozen_mem_ratio_1024", r["frozen_mem_ratio_1024_lora"])),
         ("  same, full with --step-in-backward (steady state)",
          f"{r['frozen_mem_ratio_1024_step_in_backward']:.2f}", ">= 3",
          _met("frozen_mem_ratio_1024", r["frozen_mem_ratio_1024_step_in_backward"])),
         ("sft_vs_trl_time_ratio (ours / TRL)", f"{r['sft_vs_trl_time_ratio']:.3f}", "<= 1.1",
          _met("sft_vs_trl_time_ratio", r["sft_vs_trl_time_ratio"])),
         ("  same, step by step on the same batches (median)", f"{r['sft_vs_trl_paired_ratio']:.3f}", "", ""),
         ("frozen_sft_vs_trl_time_ratio (ours frozen / TRL)", f"{r['frozen_sft_vs_trl_time_ratio']:.3f}", "", "")]
    w = [max(len(row[i]) for row in t) for i in range(4)]
    lines += ["  ".join(c.ljust(x) for c, x in zip(row, w)) for row in t]
    threads = m["torch_threads"]
    low = [k for k, v in r["lengths"].items()
           if min(v["ordinary_cpu_per_wall"], v["frozen_cpu_per_wall"]) < 0.8 * threads]
    low += [f"SFT {k}" for k, xs in r["sft_cpu_per_wall"].items() if min(xs) < 0.8 * threads]
    if low:
        lines.append(f"warning: CPU time / wall time of a median step below {0.8 * threads:.1f} ({threads} threads) "
                     f"in {', '.join(low)}: the process was waiting for the CPUs (other processes?)")
    if r["shared_cpus"]:
        lines.append(f"warning: other processes kept {r['others_busy_cpus_at_start']} of {m['cpu_count']} CPUs "
                     "busy when the run started; the times include their preemptions")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:  # a measurement in this fresh process; one JSON line on stdout
        kind, rest = argv[1], argv[2:]
        if kind == "backprop":
            res = worker_backprop(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), rest[4])
        else:
            res = worker_sft(rest[0], int(rest[1]))
        print(json.dumps(res))
        return 0

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="3 measured backprop steps per configuration and one SFT round of 3 steps "
                         "(default: 5 steps, four SFT rounds of 6 steps)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    if not os.path.exists("/proc/self/clear_refs"):
        print("bench/train.py measures peak memory with /proc/self/clear_refs and VmHWM: Linux only",
              file=sys.stderr)
        return 2
    others_busy = _others_busy_cpus()
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    steps = 3 if args.quick else 5
    max_steps, rounds = (3, 1) if args.quick else (6, 4)
    result: dict = {"command": " ".join([".venv/bin/python", "bench/train.py", *argv]), "quick": args.quick,
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(),
                    "model": "SmolLM2-135M-Instruct (bundled), float32, CPU", "backprop_steps": steps}
    lengths = bench_backprop(steps)
    result["lengths"] = lengths
    for p, r in LENGTHS:
        v = lengths[f"{p}/{r}"]
        result[f"frozen_speedup_{p}"] = v["speedup"]
        result[f"frozen_speedup_{p}_exact"] = v["speedup_exact"]
        result[f"frozen_mem_ratio_{p}"] = v["mem_ratio"]
    # the same at 1024/64 with LoRA, the default method: the weights' gradients, the same for both losses and
    # most of the frozen peak with full weights, shrink to the adapter's
    lora = bench_backprop(steps, [(1024, 64)], "lora")["1024/64"]
    result["lora_1024"] = lora
    result["frozen_speedup_1024_lora"] = lora["speedup"]
    result["frozen_speedup_1024_lora_exact"] = lora["speedup_exact"]
    result["context_dtype"] = lora["context_dtype"]
    result["frozen_mem_ratio_1024_lora"] = lora["mem_ratio"]
    # full weights with AdamW stepped inside backward: no weight keeps its gradient past its own step. The
    # warm-up step allocates AdamW's state (twice the weights), so the steady-state step is compared: the peak
    # above what the warm-up left, i.e. above the loaded model and its optimizer state
    sib = bench_backprop(steps, [(1024, 64)], "step_in_backward")["1024/64"]
    result["step_in_backward_1024"] = sib
    result["frozen_speedup_1024_step_in_backward"] = sib["speedup"]
    result["frozen_mem_ratio_1024_step_in_backward"] = sib["mem_ratio_after_warmup"]
    result["frozen_mem_ratio_1024_after_warmup"] = lengths["1024/64"]["mem_ratio_after_warmup"]
    result.update(bench_sft(max_steps, rounds))
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["load_avg_1m"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    result["others_busy_cpus_at_start"] = others_busy
    result["shared_cpus"] = others_busy is not None and others_busy >= 0.5
    result["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    result["met"] = {k: _met(k, result.get(k)) for k in TARGETS}
    if args.json:
        print(json.dumps(result))
    else:
        print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
