"""The suite's two smoke runs of every experiment (`--jobs 2` and `--jobs 1`), each made once per test session.

`once(shared, name, jobs)` runs the smoke profile into `shared/name/` under a file lock and leaves its result in
`shared/name.json`; whoever comes first (a test's fixture, or the eager start below) pays, the others read the JSON.

Eager start: the two runs take most of the suite's time and one of them is sequential, so `conftest.py` starts both in
the background (`python tests/smoke.py SHARED NAME JOBS`) as soon as the tests that need them are collected, instead
of when a worker happens to reach those tests late in the run. A run that fails in the background writes nothing; the
fixture then runs it again itself and shows the error. `TOKENLAB_EAGER_SMOKE=0` turns the eager start off."""
from __future__ import annotations
import json, os, sys, time
from pathlib import Path

SMOKE_HANG_GUARD_S = 600   # per notebook: a hang guard, not a speed target (timings live in README/bench)
RUNS = {"smoke-jobs2": 2, "smoke-jobs1": 1}          # name -> parallel jobs (2 is capped by the cores)


def jobs_of(name: str) -> int:
    return min(RUNS[name], os.cpu_count() or 1)


def smoke(base: Path, jobs: int) -> dict:
    "The smoke profile of every experiment with `jobs` parallel jobs, into `base`/figures and `base`/runs."
    from tokenlab.lab import runner
    old = {k: os.environ.get(k) for k in ("TOKENLAB_FIGURES", "TOKENLAB_RUNS")}
    os.environ["TOKENLAB_FIGURES"], os.environ["TOKENLAB_RUNS"] = str(base / "figures"), str(base / "runs")
    try:
        t0 = time.perf_counter()
        res = runner.run(None, "smoke", jobs=jobs, progress=False, echo=None, timeout=SMOKE_HANG_GUARD_S)
        return {"res": res, "wall": time.perf_counter() - t0, "figs": str(base / "figures" / "smoke")}
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def once(shared: Path, name: str) -> dict:
    "The smoke run `name` (see RUNS) made once into `shared`/`name`/, its result read from `shared`/`name`.json."
    from filelock import FileLock
    done = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            folder = shared / name
            folder.mkdir(exist_ok=True)
            res = smoke(folder, jobs_of(name))
            tmp = done.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(res, default=str)); os.replace(tmp, done)
    return json.loads(done.read_text())


if __name__ == "__main__":                       # the eager background start from conftest.py
    shared, name = Path(sys.argv[1]), sys.argv[2]
    if name not in RUNS: sys.exit(f"unknown smoke run {name!r}; one of {', '.join(RUNS)}")
    once(shared, name)
