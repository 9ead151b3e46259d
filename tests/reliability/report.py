"""Run the reliability suite and write what it measured into docs/reliability.md.

Every test of ``tests/reliability`` records its figures (trials, faults
survived, inputs tried, losses, latencies) through the ``figures`` fixture;
this script runs the whole suite, slow cases included, with those figures
going to a file, then renders them as the page. Run::

    .venv/bin/python tests/reliability/report.py            # about 10 minutes on 2 cores
    .venv/bin/python tests/reliability/report.py -k load    # only some tests (the page keeps the others' rows)

The page is rewritten only when pytest passed, so a failing run never
replaces good figures with partial ones (the failing tests' figures are
printed instead).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "reliability.md"
DATA = REPO / "docs" / "reliability.json"  # the figures behind the page, merged across partial runs

INTRO = """# Reliability

What the reliability suite (`tests/reliability/`, part of `make test`) puts the system through, and
what it measured. This page is written by `.venv/bin/python tests/reliability/report.py`, which runs the
suite with every test recording its figures; do not edit it by hand.
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, {platform.system()}"


def render(rows: list[dict], runs: list[dict]) -> str:
    by_test: dict[str, list[dict]] = {}
    for row in rows:
        by_test.setdefault(row["test"], []).append(row)
    out = [INTRO, "The figures below come from these runs (a partial run replaces the rows of the tests it ran):\n"]
    for n, meta in enumerate(runs, 1):
        out.append(f"{n}. {meta['when']} on {meta['machine']}: `{meta['command']}` "
                   f"({meta['passed']} passed in {meta['seconds']:.0f} s)")
    out.append("")
    for module in sorted({t.split("::")[0] for t in by_test}):
        out.append(f"## {module}\n")
        for test in sorted(t for t in by_test if t.split("::")[0] == module):
            run = by_test[test][0].get("run")
            out.append(f"### `{test.split('::', 1)[1]}`" + (f" (run {run})" if run else "") + "\n")
            out.append("| figure | value | note |\n|---|---|---|")
            for row in by_test[test]:
                value = row["value"]
                if isinstance(value, float):
                    value = f"{value:.4g}"
                out.append(f"| {row['name']} | {value} | {row['note']} |")
            out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "MINDLOOP_RELIABILITY_FIGURES": str(figures)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability", *argv]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - start
        sys.stdout.write(proc.stdout[-4000:])
        rows = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        print(f"pytest failed ({proc.returncode}); {PAGE.relative_to(REPO)} left as it was. Figures of this run:")
        for row in rows:
            print(f"  {row['test']}: {row['name']} = {row['value']} {row['note']}")
        return proc.returncode
    old = json.loads(DATA.read_text()) if DATA.exists() else {"rows": [], "runs": []}
    ran = {row["test"] for row in rows}
    kept = [row for row in old["rows"] if row["test"] not in ran]
    # number the runs that still have rows, oldest first, then this one
    used = sorted({row.get("run") for row in kept if row.get("run")})
    renumber = {old_n: new_n for new_n, old_n in enumerate(used, 1)}
    runs = [old["runs"][n - 1] for n in used]
    kept = [{**row, "run": renumber.get(row.get("run"))} for row in kept]
    merged = kept + [{**row, "run": len(runs) + 1} for row in rows]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    meta = {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": ".venv/bin/python tests/reliability/report.py " + " ".join(argv),
        "passed": summary.split(" passed")[0].split()[-1] if " passed" in summary else "?",
        "seconds": seconds,
    }
    tmp_data, tmp_page = DATA.with_suffix(".json.tmp"), PAGE.with_suffix(".md.tmp")
    runs.append(meta)
    tmp_data.write_text(json.dumps({"runs": runs, "rows": merged}, indent=1) + "\n")
    tmp_page.write_text(render(merged, runs))
    os.replace(tmp_data, DATA)
    os.replace(tmp_page, PAGE)
    print(f"wrote {PAGE.relative_to(REPO)} ({len(rows)} figures from this run, {len(merged)} in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
