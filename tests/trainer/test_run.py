"""Training runs on a tiny local model: what a run writes, checkpoints, lineage, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mindloop.trainer.checkpoints import Checkpoints  # noqa: E402
from mindloop.trainer.data import read_dataset, rows_from_lines  # noqa: E402
from mindloop.trainer.errors import CheckpointError, InvalidDataset, ModelUnavailable  # noqa: E402
from mindloop.trainer.evaluate import Probe  # noqa: E402
from mindloop.trainer.run import TrainConfig, record_run, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [{"role": "user", "content": "rename the function"}]
ROWS = [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "done it is"}], "id": f"e{i}"}
        for i in range(8)]
PROBES = [Probe(PROMPT, "done it is", "no use tabs", "target"), Probe(PROMPT, "no", "sure it is done", "pushback")]


def _cfg(tiny_lm, **kw):
    base = dict(model=str(tiny_lm), batch_size=2, max_steps=2, lr=1e-2)
    return TrainConfig(**{**base, **kw})


def test_an_sft_lora_run_writes_its_record_and_a_checkpoint(tiny_lm, tmp_path):
    result = train(_cfg(tiny_lm), ROWS, home=tmp_path, probes=PROBES, progress=False)
    run = result.run_dir
    assert {"config.json", "steps.jsonl", "loss.png", "metrics.json", "versions.json", "status"} <= {
        p.name for p in run.iterdir()}
    assert (run / "status").read_text().startswith("finished")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["context_frozen"] is True and cfg["learning_rate"] == 1e-2 and cfg["data_hash"] == result.data_hash
    from mindloop.trainer.frozen import _cpu_has_native_bf16

    assert cfg["context_dtype"] == "auto"  # the prompt pass ran in bfloat16 where the CPU has it natively
    assert cfg["context_dtype_used"] == ("bfloat16" if _cpu_has_native_bf16() else "float32")
    assert len(result.steps) == 2 and all("loss" in s for s in result.steps)
    assert set(result.before["kinds"]) == {"target", "pushback"} and result.after["checkpoint"] == result.checkpoint
    manifest = Checkpoints(tmp_path / "checkpoints").get(result.checkpoint)
    assert manifest["kind"] == "lora" and manifest["parent"] is None and manifest["run"] == result.run_id
    assert (result.checkpoint_dir / "adapter_model.safetensors").exists()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_the_frozen_sft_loss_goes_down(tiny_lm, tmp_path):
    result = train(_cfg(tiny_lm, method="full", max_steps=8, lr=5e-2, evaluate=False), ROWS, home=tmp_path,
                   progress=False)
    losses = [s["loss"] for s in result.steps if "loss" in s]
    assert losses[-1] < losses[0] * 0.3, losses


def test_lineage_the_next_run_starts_from_the_promoted_checkpoint(tiny_lm, tmp_path):
    store = Checkpoints(tmp_path / "checkpoints")
    first = train(_cfg(tiny_lm, evaluate=False), ROWS, home=tmp_path, progress=False)
    store.promote(first.checkpoint)
    second = train(_cfg(tiny_lm, evaluate=False), ROWS, home=tmp_path, progress=False)
    assert second.parent == first.checkpoint and store.get(second.checkpoint)["parent"] == first.checkpoint
    store.promote(second.checkpoint)
    assert store.rollback(reason="test")["checkpoint"] == first.checkpoint
    assert store.rollback() is None and store.promoted() is None
    with pytest.raises(CheckpointError, match="nothing is promoted"):
        store.rollback()
    assert [h["event"] for h in store.history()] == ["promote", "promote", "rollback", "rollback"]
    assert [h["seq"] for h in store.history()] == [1, 2, 3, 4]


def test_full_weights_checkpoint_is_served_by_the_local_backend(tiny_lm, tmp_path):
    from mindloop.agents.chat.backends import LocalBackend

    result = train(_cfg(tiny_lm, method="full", context_frozen=False, evaluate=False), ROWS, home=tmp_path,
                   progress=False)
    assert (result.checkpoint_dir / "model.safetensors").exists()
    Checkpoints(tmp_path / "checkpoints").promote(result.checkpoint)
    backend = LocalBackend(str(tiny_lm), checkpoints=tmp_path / "checkpoints")
    backend.load()
    assert backend.checkpoint == result.checkpoint


@pytest.mark.parametrize("objective,rows", [
    ("dpo", [{"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "done"}],
              "rejected": [{"role": "assistant", "content": "no use tabs"}]}] * 4),
    ("kto", [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "done"}], "label": True},
             {"prompt": PROMPT, "completion": [{"role": "assistant", "content": "no"}], "label": False}] * 2),
])
def test_preference_objectives_run_through_trl(tiny_lm, tmp_path, objective, rows):
    result = train(_cfg(tiny_lm, objective=objective), rows, home=tmp_path, probes=PROBES, progress=False)
    assert result.steps and result.checkpoint_dir.exists()


def _nothing_written(home: Path) -> bool:
    ck = home / "checkpoints"
    return not ck.exists() or not [p for p in ck.iterdir() if p.name != "promoted.json"]


def test_bad_input_fails_before_any_step_and_writes_no_checkpoint(tiny_lm, tmp_path):
    with pytest.raises(InvalidDataset, match="empty"):
        train(_cfg(tiny_lm), [], home=tmp_path)
    long = [{"prompt": [{"role": "user", "content": "hello " * 400}],
             "completion": [{"role": "assistant", "content": "ok"}], "id": "too-long"}]
    with pytest.raises(InvalidDataset, match=r"example 1 \(too-long\) is \d+ tokens .* the limit is 64"):
        train(_cfg(tiny_lm, max_length=64), long, home=tmp_path)
    with pytest.raises(ModelUnavailable):
        train(_cfg(tiny_lm, model=str(tmp_path / "no-such-model")), ROWS, home=tmp_path)
    with pytest.raises(InvalidDataset, match="context dtype must be one of auto, model, bfloat16, got 'fp16'"):
        _cfg(tiny_lm, context_dtype="fp16")
    assert _nothing_written(tmp_path) and not (tmp_path / "runs").exists()


def test_a_model_without_a_chat_template_is_refused(tiny_lm, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_lm, bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in bare.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(InvalidDataset, match="no chat template"):
        train(_cfg(bare), ROWS, home=tmp_path / "home")
    assert _nothing_written(tmp_path / "home")


def test_a_corrupt_promoted_checkpoint_is_refused_before_training(tiny_lm, tmp_path):
    store = Checkpoints(tmp_path / "checkpoints")
    first = train(_cfg(tiny_lm, evaluate=False), ROWS, home=tmp_path, progress=False)
    store.promote(first.checkpoint)
    weights = first.checkpoint_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        train(_cfg(tiny_lm), ROWS, home=tmp_path)
    assert [m["id"] for m in store.list()] == [first.checkpoint]


def test_a_failed_save_leaves_no_checkpoint_and_stale_temp_folders_are_cleaned(tmp_path):
    store = Checkpoints(tmp_path / "checkpoints")

    def broken(folder: Path) -> None:
        (folder / "adapter_config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write("ckpt_x", broken, {"kind": "lora"})
    assert list(store.root.iterdir()) == []
    (store.root / ".tmp-ckpt_killed").mkdir()  # what a SIGKILL during a save leaves
    assert store.list() == [] and store.clean() == [".tmp-ckpt_killed"]
    with pytest.raises(CheckpointError, match="not a checkpoint id"):
        store.promote(".tmp-ckpt_killed")


def test_runs_checkpoints_and_evals_are_recorded_in_the_graph(tiny_lm, tmp_path, graph):
    from mindloop.graph import Example

    ex = graph.add(Example(prompt=PROMPT, completion="done it is"))
    result = train(_cfg(tiny_lm), ROWS, home=tmp_path, probes=PROBES, progress=False)
    ids = record_run(graph, result, example_ids=[ex.id])
    assert [e.dst for e in graph.edges(ids["run"], kinds=["trained_on"], direction="out")] == [ex.id]
    assert [e.dst for e in graph.edges(ids["run"], kinds=["produced"], direction="out")] == [result.checkpoint]
    evals = [e.src for e in graph.edges(result.checkpoint, kinds=["evaluated"], direction="in")]
    assert len(evals) == 1 and graph.get(evals[0]).metrics == result.after
    assert graph.get(ids["run"]).metrics["final_loss"] == result.steps[-1]["loss"]


def test_dataset_files_are_validated_by_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": PROMPT}) + "\n")
    with pytest.raises(InvalidDataset, match="line 2: a sft row needs prompt, completion; missing completion"):
        read_dataset(f, "sft")
    with pytest.raises(InvalidDataset, match="line 1: a dpo row needs"):
        read_dataset(f, "dpo")
    with pytest.raises(InvalidDataset, match="the prompt must end with a user message"):
        rows_from_lines([json.dumps({**ROWS[0], "prompt": [{"role": "assistant", "content": "hi"}]})], "sft")
    with pytest.raises(InvalidDataset, match="no such file"):
        read_dataset(tmp_path / "missing.jsonl", "sft")


@pytest.mark.slow
def test_mindloop_train_under_accelerate_launch_with_two_cpu_processes(tiny_lm, tmp_path):
    """Both processes train (DDP over gloo); only the main one records the run and prints it."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    home = tmp_path / "home"
    # `accelerate launch --cpu --num_processes 2` starts one process unless MPI is set up (its CPU path is
    # mpirun); torchrun's launcher with ACCELERATE_USE_CPU (what --cpu sets) gives two gloo processes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "MINDLOOP_HOME": str(home),
           "MINDLOOP_GRAPH_EMBEDDER": "hashing", "PYTHONPATH": str(ROOT)}
    accelerate = str(Path(sys.executable).parent / "accelerate")
    out = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mindloop.agents.cli", "train",
                          "--dataset", str(data), "--model", str(tiny_lm), "--batch-size", "2", "--max-steps", "2",
                          "--no-eval", "--json"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [line] = [line for line in out.stdout.splitlines() if line.startswith("{")]  # printed once
    result = json.loads(line)
    assert result["config"]["processes"] == 2
    store = Checkpoints(home / "checkpoints")
    assert [m["id"] for m in store.list()] == [result["checkpoint"]]
    from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph

    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
        assert [r.id for r in g.nodes(kind="run")] == [result["run"]]
        assert [c.id for c in g.nodes(kind="checkpoint")] == [result["checkpoint"]]


def test_a_known_evaluation_of_the_parent_is_reused_only_on_the_same_probes(tiny_lm, tmp_path, monkeypatch):
    import mindloop.trainer.run as run_mod

    store = Checkpoints(tmp_path / "checkpoints")
    first = train(_cfg(tiny_lm), ROWS, home=tmp_path, probes=PROBES, progress=False)
    assert first.after["checkpoint"] == first.checkpoint  # the after evaluation names what it measured
    store.promote(first.checkpoint)
    calls = []
    real = run_mod.evaluate
    monkeypatch.setattr(run_mod, "evaluate", lambda *a, **kw: calls.append(kw["checkpoint"]) or real(*a, **kw))
    second = train(_cfg(tiny_lm), ROWS, home=tmp_path, probes=PROBES, progress=False, before=first.after)
    assert calls == [second.checkpoint]  # only the new checkpoint was evaluated
    assert second.before == {k: v for k, v in first.after.items() if k not in ("steering", "attention_mass")}
    store.promote(second.checkpoint)
    calls.clear()
    third = train(_cfg(tiny_lm), ROWS, home=tmp_path, probes=PROBES[:1], progress=False, before=second.after)
    assert calls == [second.checkpoint, third.checkpoint]  # other probes: the parent is evaluated again
    calls.clear()
    train(_cfg(tiny_lm), ROWS, home=tmp_path, probes=PROBES, progress=False, before=first.after)
    assert len(calls) == 2  # an evaluation of another checkpoint (first, not the promoted second) is not reused


def test_a_full_run_with_the_step_inside_backward_learns(tiny_lm, tmp_path):
    result = train(_cfg(tiny_lm, method="full", max_steps=8, lr=5e-2, evaluate=False, step_in_backward=True), ROWS,
                   home=tmp_path, progress=False)
    losses = [s["loss"] for s in result.steps if "loss" in s]
    assert losses[-1] < losses[0] * 0.3, losses
    assert json.loads((result.run_dir / "config.json").read_text())["step_in_backward"] is True
    with pytest.raises(InvalidDataset, match="--method full"):
        _cfg(tiny_lm, step_in_backward=True)  # LoRA
