"""A full disk: writes fail with a clear error, nothing acknowledged is lost, and logging resumes when space returns.

A child process logs turns under a file-size limit (``RLIMIT_FSIZE``, with
SIGXFSZ ignored so that a write past it fails with EFBIG instead of killing
the process) and, where this user may mount one, on a small tmpfs (ENOSPC).
The test then checks: the failure is a :class:`graph.DiskFull` whose message
names graph.db and the problem; every turn acknowledged before it is stored
once and the graph passes ``conftest.recover``'s invariants (integrity, FTS,
session chains, vectors); after the limit is lifted (in the same process,
and in a new one) logging works again. The CLI prints the error and exits
non-zero. A checkpoint saved under the limit leaves no checkpoint, whole or
half, and the next save works. Run::

    .venv/bin/python -m pytest tests/reliability/test_disk_full.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Logs turns (2-4 KB of text each, a 3-turn batch now and then) until the disk
# has refused three calls; prints "ack <id>:<pos> ..." after each call
# returned and "full <message>" for each refused one (a smaller call after a
# refusal may still fit, or fit again once SQLite restarts its WAL: that is
# fine, it is acknowledged like any other), then, if told to, lifts the limit
# and logs one more turn in the same process.
FULL_CHILD = '''
import resource, signal, sys
from mindloop.graph import DiskFull, GraphConfig, MemoryGraph

home, limit, lift = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing", embed_batch=8))
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
print("ready", flush=True)
n, refused = 0, 0
while refused < 3:
    n += 1
    try:
        if n % 5 == 0:
            turns = g.log_turns("s", [dict(role="user", text=f"batch {n}.{i} " + "word " * 600) for i in range(3)])
        else:
            turns = [g.log_turn(f"s{n % 3}", "user", f"turn {n} about renaming foo " + "word " * 500)]
    except DiskFull as e:
        refused += 1
        print("full", str(e).replace("\\n", " "), flush=True)
        continue
    print("ack", *(f"{t.id}:{t.index}" for t in turns), flush=True)
    if n > 20000:
        print("never full", flush=True)
        break
if lift:
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    t = g.log_turn("s-after", "user", "logged once the limit was lifted")
    print("ack", f"{t.id}:{t.index}", flush=True)
    print("after", flush=True)
assert not lift or g.flush(timeout=60), g.worker.last_error  # without space the vectors wait
g.close()
print("closed", flush=True)
'''


def _run(spawn, home, limit: int, lift: bool) -> tuple[list[str], list[str], str]:
    """Run FULL_CHILD to its end: (acknowledged ids, refusal messages, stderr)."""
    child = spawn(FULL_CHILD, str(home), str(limit), "1" if lift else "0")
    acked, refusals, lines = [], [], []
    while (line := child.readline(timeout=120)) is not None:
        lines.append(line)
        if line.startswith("ack "):
            acked += [item.rsplit(":", 1)[0] for item in line.split()[1:]]
        elif line.startswith("full "):
            refusals.append(line[5:])
    rc = child.proc.wait(timeout=60)
    assert rc == 0 and lines[-1] == "closed", f"child exit {rc}, last lines {lines[-3:]}\n{child.stderr()}"
    assert "never full" not in lines, lines[-5:]
    return acked, refusals, child.stderr()


@pytest.mark.parametrize("limit", [600_000, 1_500_000, 3_000_000])
def test_file_size_limit_refuses_writes_clearly_and_loses_nothing(tmp_path, spawn, recovered, figures, limit):
    """EFBIG in the middle of logging: DiskFull names graph.db; acknowledged turns stay; logging resumes."""
    home = tmp_path / "home"
    acked, refusals, _ = _run(spawn, home, limit, lift=True)
    assert len(acked) >= 5, f"only {len(acked)} turns fitted under {limit} bytes: the test measures nothing"
    assert len(refusals) == 3
    for msg in refusals:
        assert str(home / "graph.db") in msg and "disk full" in msg and "file too large" in msg, msg
        assert f"file-size limit (ulimit -f) is {limit} bytes" in msg and "nothing of it was written" in msg, msg
    rec = recovered(home, acked=acked, why=f"limit {limit}")
    assert set(rec.turns) == set(acked), "a refused call left turns behind, or an acknowledged one is gone"
    assert any(t.session == "s-after" for t in rec.turns.values())

    figures.record(f"turns acknowledged before EFBIG (limit {limit} B)", len(acked) - 1, "all stored once")
    figures.record(f"refused calls (limit {limit} B)", 3, "DiskFull naming graph.db; nothing partial")


RESTART_CHILD = '''
import sys
from mindloop.graph import GraphConfig, MemoryGraph

home = sys.argv[1]
g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"))
ids = [g.log_turn(f"s{i % 3}", "user", f"after restart {i}").id for i in range(5)]
assert g.flush(timeout=60), g.worker.last_error
g.close()
print("ack", *ids, flush=True)
'''


def test_a_new_process_without_the_limit_logs_again(tmp_path, spawn, recovered, figures):
    home = tmp_path / "home"
    acked, refusals, _ = _run(spawn, home, 800_000, lift=False)
    assert refusals and len(acked) >= 5
    child = spawn(RESTART_CHILD, str(home))
    line = child.readline(timeout=120)
    assert line is not None and line.startswith("ack "), f"{line!r}\n{child.stderr()}"
    later = line.split()[1:]
    rec = recovered(home, acked=acked + later, why="restart without limit")
    assert set(rec.turns) == set(acked) | set(later)
    figures.record("turns logged by a new process after EFBIG", len(later), "session chains continue")


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       check=False)
    return r.returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs (root with CAP_SYS_ADMIN only; skipped elsewhere), unmounted at teardown."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the file-size limit tests cover EFBIG")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_filesystem_refuses_writes_clearly_and_logging_resumes_when_space_returns(
        small_fs, spawn, recovered, figures):
    """ENOSPC on a real (tiny) filesystem; then the filesystem grows and a new process logs again."""
    home = small_fs / "home"
    acked, refusals, _ = _run(spawn, home, 0, lift=False)
    assert len(acked) >= 5 and len(refusals) == 3
    for msg in refusals:
        assert str(home / "graph.db") in msg and "disk full" in msg and "nothing of it was written" in msg, msg
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    child = spawn(RESTART_CHILD, str(home))
    line = child.readline(timeout=120)
    assert line is not None and line.startswith("ack "), f"{line!r}\n{child.stderr()}"
    later = line.split()[1:]
    rec = recovered(home, acked=acked + later, why="tmpfs full, then grown")
    assert set(rec.turns) == set(acked) | set(later)
    figures.record("turns acknowledged before ENOSPC (3 MiB tmpfs)", len(acked), "all stored once")
    figures.record("turns logged after the filesystem grew", len(later))


CLI_CHILD = '''
import resource, signal, sys
from mindloop.agents.cli import main

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
sys.exit(main(["log", "import", sys.argv[1]]))
'''


def test_the_cli_prints_the_error_and_exits_non_zero(tmp_path, figures):
    """``mindloop log import`` into a full graph: one line naming graph.db, exit 2, no traceback, nothing partial."""
    home = tmp_path / "home"
    env = {**os.environ, "MINDLOOP_HOME": str(home), "MINDLOOP_GRAPH_EMBEDDER": "hashing",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"session": "a", "messages": [{"role": "user", "content": "fits"}]}) + "\n")
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(json.dumps({"session": f"b{i}", "messages": [
        {"role": "user", "content": f"conversation {i} " + uuid.uuid4().hex * 400}]}) for i in range(40)) + "\n")
    ok = subprocess.run([sys.executable, "-c", CLI_CHILD, str(small), str(10**9)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    full = subprocess.run([sys.executable, "-c", CLI_CHILD, str(big), "400000"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert full.returncode == 2, (full.returncode, full.stderr[-2000:])
    assert "Traceback" not in full.stderr, full.stderr[-2000:]
    error = [line for line in full.stderr.splitlines() if line.startswith("mindloop: error:")]
    assert len(error) == 1 and "graph.db" in error[0] and "disk full" in error[0], full.stderr[-2000:]

    from mindloop.graph import GraphConfig, MemoryGraph

    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as g:  # the import is all or nothing
        assert [t.text for t in g.nodes(kind="turn")] == ["fits"]
        assert g.store.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    figures.record("CLI import into a full graph", "exit 2", "one error line naming graph.db; nothing imported")


CKPT_CHILD = '''
import importlib.util, json, os, resource, signal, sys
from pathlib import Path

home, model_dir, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
spec = importlib.util.spec_from_file_location("tests_conftest", "tests/conftest.py")
helpers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helpers)
helpers.build_tiny_lm(model_dir)
weights = os.path.getsize(model_dir / "model.safetensors")

from mindloop.trainer.checkpoints import Checkpoints
from mindloop.trainer.run import TrainConfig, train

prompt = [{"role": "user", "content": "rename the function"}]
rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": "done it is"}], "id": f"e{i}"}
        for i in range(4)]
config = TrainConfig(model=str(model_dir), method="full", batch_size=2, max_steps=1, evaluate=False)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    train(config, rows, home=home, progress=False)
    print(json.dumps({"failed": None}), flush=True)
except Exception as e:
    print(json.dumps({"failed": f"{type(e).__name__}: {e}", "weights": weights}), flush=True)
store = Checkpoints(home / "checkpoints")
print(json.dumps({"listed": [m["id"] for m in store.list()], "promoted": store.promoted(),
                  "entries": sorted(os.listdir(store.root)) if store.root.exists() else []}), flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
result = train(config, rows, home=home, progress=False)
manifest = store.get(result.checkpoint)
print(json.dumps({"trained": result.checkpoint, "listed": [m["id"] for m in store.list()],
                  "kind": manifest["kind"]}), flush=True)
'''


def test_a_checkpoint_saved_into_a_full_disk_leaves_no_checkpoint(tmp_path, figures):
    """The weights file (about 85 KB) crosses a 40 KB limit: no checkpoint appears, whole or half; then one does."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", CKPT_CHILD, str(tmp_path / "home"), str(tmp_path / "tiny"), "40000"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3, out.stdout
    failed, after_fail, trained = lines
    assert failed["weights"] > 40000, "the weights fit under the limit: the test measures nothing"
    assert failed["failed"] and "File too large" in failed["failed"], failed
    assert after_fail == {"listed": [], "promoted": None, "entries": []}, after_fail  # no <id>/, no .tmp-<id>/
    assert trained["listed"] == [trained["trained"]] and trained["kind"] == "full", trained
    assert not list((tmp_path / "home" / "checkpoints").glob(".tmp-*"))
    figures.record("checkpoint saves into a full disk", 1, f"{failed['failed'][:60]}...; no checkpoint left")
    figures.record("checkpoints visible after the failed save", 0)
