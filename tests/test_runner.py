"""tokenlab.lab.runner: profiles, parameter checks, kernel choice, failures, timeouts, parallel jobs, resume, sweeps."""
from __future__ import annotations
import json, os, sys, time
from pathlib import Path
import pytest
from tokenlab.lab import runner
from tokenlab.lab.core import TokenlabError

PROBE = """
import json, os, sys, time
t0 = time.time(); time.sleep(sleep)
json.dump({"prefix": sys.prefix, "executable": sys.executable, "cwd": os.getcwd(), "n": n,
           "env_profile": os.environ.get("TOKENLAB_PROFILE"), "omp": os.environ.get("OMP_NUM_THREADS"), "profile": profile, "start": t0, "end": time.time()},
          open(out, "w"))
"""


@pytest.fixture
def probe(experiments, tmp_path):
    "Notebooks `p1`, `p2` writing what their kernel sees to tmp_path/<stem>[-<n>].json."
    for s in ("p1", "p2"):
        experiments.add(s, f"profile = 'smoke'\nn = 1\nsleep = 0.0\nout = '{tmp_path}/{s}.json'", PROBE)
    experiments.profiles("""
        p1:
          defaults: {n: 2}
          cpu: {n: 3}
        """)
    return experiments


def _run(exp, tmp_path, *a, **kw):
    kw = {"exp_dir": exp.dir, "out_dir": tmp_path / "runs", "progress": False, "echo": None, **kw}
    return runner.run(*a, **kw)


def _st(res) -> list[str]:
    "Statuses, with the error of a failed run attached so that a failing assertion shows it."
    return [r["status"] if r["status"] != "failed" else f"failed: {r.get('error')}" for r in res]


def seen(tmp_path, stem): return json.loads((tmp_path / f"{stem}.json").read_text())


def test_kernel_env_cwd_and_profile_values(probe, tmp_path, monkeypatch):
    # a user-level python3 kernel spec pointing elsewhere must not be picked
    fake = tmp_path / "jupyter-data" / "kernels" / "python3"
    fake.mkdir(parents=True)
    (fake / "kernel.json").write_text(json.dumps({"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"], "display_name": "x", "language": "python"}))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(fake.parent.parent))
    res = _run(probe, tmp_path, None, "cpu")
    assert [r["status"] for r in res] == ["ok", "ok"], res
    s = seen(tmp_path, "p1")
    assert s["prefix"] == sys.prefix and Path(s["executable"]).parent == Path(sys.executable).parent
    assert s["cwd"] == str(probe.dir) and s["env_profile"] == "cpu" and s["profile"] == "cpu" and s["n"] == 3
    assert seen(tmp_path, "p2")["n"] == 1
    executed = tmp_path / "runs" / "p1.ipynb"
    assert executed.exists() and "injected-parameters" in executed.read_text()
    summary = (tmp_path / "runs" / "summary.md").read_text()
    assert "| p1 " in summary and "cpu profile: 2 notebooks in " in summary


def test_unknowns_refused_before_running(probe, tmp_path):
    with pytest.raises(TokenlabError, match=r"^notebook 'p1' has no parameter 'bogus'; valid parameters: n, out, profile, sleep$"):
        _run(probe, tmp_path, None, "smoke", {"bogus": 1})
    with pytest.raises(TokenlabError, match=r"^unknown notebook 'p3'; valid notebooks: p1, p2$"):
        _run(probe, tmp_path, ["p3"], "smoke")
    with pytest.raises(TokenlabError, match=r"^unknown profile 'laptop'; valid profiles: cpu, gpu, smoke$"):
        _run(probe, tmp_path, None, "laptop")
    probe.profiles("p1:\n  smoke: {typo: 1}\n")
    with pytest.raises(TokenlabError, match="notebook 'p1' has no parameter 'typo'"):
        _run(probe, tmp_path, ["p1"], "smoke")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.ipynb"))


def test_failure_recorded_others_go_on(experiments, tmp_path):
    experiments.add("bad", "profile = 'smoke'", "raise KeyError('missing thing')")
    experiments.add("good", "profile = 'smoke'", "x = 1")
    res = _run(experiments, tmp_path, None, "smoke")
    assert [(r["name"], r["status"]) for r in res] == [("bad", "failed"), ("good", "ok")]
    assert res[0]["error"] == "KeyError: 'missing thing'"
    state = json.loads((tmp_path / "runs" / "state.json").read_text())
    assert state["bad"]["status"] == "failed" and state["bad"]["error"] == "KeyError: 'missing thing'"
    assert "(1 failed)" in (tmp_path / "runs" / "summary.md").read_text()


def test_timeout_kills_the_kernel(experiments, tmp_path):
    experiments.add("slow", "profile = 'smoke'\npidfile = ''", "import os, time\nopen(pidfile, 'w').write(str(os.getpid()))\ntime.sleep(300)")
    t0 = time.time()
    res = _run(experiments, tmp_path, None, "smoke", {"pidfile": str(tmp_path / "k.pid")}, timeout=8)
    assert time.time() - t0 < 60
    assert res[0]["status"] == "failed" and res[0]["error"] == "timeout after 8 s"
    pid = int((tmp_path / "k.pid").read_text())
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]: break
        time.sleep(0.1)
    else: pytest.fail("kernel still alive after timeout")


def test_parallel_jobs_overlap(probe, tmp_path):
    res = _run(probe, tmp_path, None, "smoke", {"sleep": 4.0}, jobs=2)
    assert _st(res) == ["ok", "ok"]
    a, b = seen(tmp_path, "p1"), seen(tmp_path, "p2")
    assert a["start"] < b["end"] and b["start"] < a["end"], "the two notebooks did not run concurrently"
    # parallel jobs share the cores: each child's math libraries start with cores // jobs threads
    want = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 2))
    assert a["omp"] == b["omp"] == want


def test_one_job_keeps_default_threads(probe, tmp_path):
    assert _st(_run(probe, tmp_path, ["p1"], "smoke")) == ["ok"]
    assert seen(tmp_path, "p1")["omp"] == os.environ.get("OMP_NUM_THREADS")
    assert runner.thread_env(None) == {} and set(runner.thread_env(3).values()) <= {"3"}


def test_thread_env_sets_every_library_and_keeps_the_users_choice(monkeypatch):
    for v in runner.THREAD_VARS: monkeypatch.delenv(v, raising=False)
    assert runner.thread_env(3) == {v: "3" for v in runner.THREAD_VARS}
    assert set(runner.THREAD_VARS) >= {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert "OMP_NUM_THREADS" not in runner.thread_env(3) and runner.thread_env(3)["MKL_NUM_THREADS"] == "3"


def test_resume(probe, tmp_path):
    assert _st(_run(probe, tmp_path, None, "smoke")) == ["ok", "ok"]
    assert _st(_run(probe, tmp_path, None, "smoke", resume=True)) == ["skipped", "skipped"]
    # changed parameters -> rerun; without --resume -> rerun
    assert _st(_run(probe, tmp_path, ["p1"], "smoke", {"n": 9}, resume=True)) == ["ok"]
    assert _st(_run(probe, tmp_path, ["p2"], "smoke")) == ["ok"]
    # changed notebook -> rerun
    nb = probe.dir / "p2.ipynb"; nb.write_text(nb.read_text().replace("time.sleep(sleep)", "time.sleep(sleep) "))
    assert _st(_run(probe, tmp_path, ["p2"], "smoke", resume=True)) == ["ok"]
    assert _st(_run(probe, tmp_path, ["p2"], "smoke", resume=True)) == ["skipped"]
    # a failed run is never skipped
    probe.add("p3", "profile = 'smoke'", "1/0")
    assert _run(probe, tmp_path, ["p3"], "smoke", resume=True)[0]["status"] == "failed"
    assert _run(probe, tmp_path, ["p3"], "smoke", resume=True)[0]["error"] == "ZeroDivisionError: division by zero"


def test_resume_key_tracks_library(probe, monkeypatch):
    job = runner.plan(["p1"], "smoke", exp_dir=probe.dir)[0]
    assert runner.job_key(job, "a") != runner.job_key(job, "b")


def test_sweep_grid(probe, tmp_path):
    res = _run(probe, tmp_path, ["p2"], "smoke", sweeps=runner.parse_sweeps(["n=4,5"]))
    assert [(r["name"], r["status"], r["params"]) for r in res] == [("p2[n=4]", "ok", "n=4"), ("p2[n=5]", "ok", "n=5")]
    assert (tmp_path / "runs" / "p2[n=5].ipynb").exists() and seen(tmp_path, "p2")["n"] in (4, 5)


def test_drafts_are_not_experiments(experiments):
    experiments.add("_draft", "x = 1")
    experiments.add("real", "x = 1")
    assert list(runner.list_notebooks(experiments.dir)) == ["real"]


def test_repository_profiles_are_valid():
    "Every entry of nbs/experiments/profiles.yaml whose notebook exists resolves for every profile."
    nbs, profiles = runner.list_notebooks(), runner.load_profiles()
    for stem in set(nbs) & set(profiles):
        for p in profiles[stem]:
            if p != "defaults": runner.resolve_params(stem, nbs[stem], p, profiles)


def test_resume_reruns_when_an_output_is_gone(experiments, tmp_path, monkeypatch):
    figs = tmp_path / "figs"
    monkeypatch.setenv("TOKENLAB_FIGURES", str(figs))
    experiments.add("t1", "profile = 'smoke'",
                    "import pandas as pd\nfrom tokenlab.lab import results\nresults.init('t1', profile, {}, 0)\n"
                    "results.save_table(pd.DataFrame({'a': [1, 2]}), 't1_table', 'a table')")
    assert _run(experiments, tmp_path, ["t1"], "smoke")[0]["status"] == "ok"
    assert _run(experiments, tmp_path, ["t1"], "smoke", resume=True)[0]["status"] == "skipped"
    (figs / "smoke" / "t1_table.csv").unlink()
    assert _run(experiments, tmp_path, ["t1"], "smoke", resume=True)[0]["status"] == "ok"
    assert (figs / "smoke" / "t1_table.csv").exists()
