"""tokenlab.lab.runner: profiles, parameter checks, kernel choice, failures, timeouts, parallel jobs, resume, sweeps."""
from __future__ import annotations
import json, os, sys, time
from pathlib import Path
import pytest
from tokenlab.lab import runner
from tokenlab.lab.core import TokenlabError, figures_dir, sha256_file
from tokenlab.lab.results import read_manifest

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
    res = _run(experiments, tmp_path, None, "smoke", {"pidfile": str(tmp_path / "k.pid")}, timeout=20)
    assert time.time() - t0 < 60
    assert res[0]["status"] == "failed" and res[0]["error"] == "timeout after 20 s"
    assert "timeout after 20 s" in (figures_dir("smoke") / "FAILED_RUNS.md").read_text()
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


THREADS = """
import json, os
json.dump({v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")},
          open(out, "w"))
"""


def test_threads_parameter_pins_the_kernels_threads_whatever_jobs(experiments, tmp_path, monkeypatch):
    "A positive `threads` fixes every thread variable, whatever --jobs and the user's own variables; 0 keeps the old rule."
    for s in ("th1", "th2"):
        experiments.add(s, f"profile = 'smoke'\nthreads = 0\nout = '{tmp_path}/{s}.json'", THREADS)
    experiments.profiles("th1:\n  smoke: {threads: 3}\nth2:\n  smoke: {threads: 3}\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert _st(_run(experiments, tmp_path, None, "smoke", jobs=2)) == ["ok", "ok"]
    assert seen(tmp_path, "th1") == seen(tmp_path, "th2") == {v: "3" for v in runner.THREAD_VARS}
    assert _st(_run(experiments, tmp_path, ["th1"], "smoke", jobs=1)) == ["ok"]
    assert seen(tmp_path, "th1") == {v: "3" for v in runner.THREAD_VARS}
    assert _st(_run(experiments, tmp_path, ["th1"], "smoke", {"threads": 0}, jobs=2)) == ["ok"]   # old rule: the user's 7 kept
    assert seen(tmp_path, "th1")["OMP_NUM_THREADS"] == "7"


TAB = """
import pandas as pd
from tokenlab.lab import results
results.init(NAME, profile, {"n": n}, 0)
for i in range(n): results.save_table(pd.DataFrame({"i": [i], "n": [n]}), f"{NAME}_t{i}", f"table {i} of {n}")
results.claim(f"{NAME}_c", f"{NAME}: n is small", n, "< 5", n < 5, "test")
if fail_after: raise ValueError(f"failed after writing, n={n}")
"""


def add_tab(exp, stem: str, n: int = 2):
    "A notebook that registers n tables and a claim (ids prefixed by its stem), then fails if `fail_after`."
    return exp.add(stem, f"profile = 'smoke'\nn = {n}\nfail_after = False", f"NAME = {stem!r}\n" + TAB)


def test_one_run_per_notebook_stale_outputs_removed(experiments, tmp_path):
    add_tab(experiments, "tab")
    figs = figures_dir("smoke")
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", {"n": 3})) == ["ok"]
    assert sorted(read_manifest(figs / "MANIFEST.json")["outputs"]) == ["tab_c", "tab_t0", "tab_t1", "tab_t2"]
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", {"n": 1})) == ["ok"]
    man = read_manifest(figs / "MANIFEST.json")
    assert list(man["outputs"]) == ["tab_t0", "tab_c"] and man["runs"]["tab"]["outputs"] == ["tab_t0", "tab_c"]
    assert {o["run_id"] for o in man["outputs"].values()} == {man["runs"]["tab"]["run_id"]}
    assert not (figs / "tab_t1.csv").exists() and not (figs / "tab_t2.md").exists()
    assert "tab_t1" not in (figs / "REPORT.md").read_text() and not list((figs / ".staging").glob("*"))


def test_parallel_jobs_publish_into_one_manifest_in_a_fixed_order(experiments, tmp_path, monkeypatch):
    "Two notebooks committing at once lose nothing (file lock); the report's order and bytes do not depend on --jobs."
    for s in ("zeta", "alpha"): add_tab(experiments, s)
    reports = []
    for jobs in (2, 1):
        monkeypatch.setenv("TOKENLAB_FIGURES", str(tmp_path / f"figs{jobs}"))
        assert _st(_run(experiments, tmp_path, None, "smoke", jobs=jobs)) == ["ok", "ok"]
        man = read_manifest(figures_dir("smoke") / "MANIFEST.json")
        assert list(man["outputs"]) == ["alpha_t0", "alpha_t1", "alpha_c", "zeta_t0", "zeta_t1", "zeta_c"]
        assert sorted(man["runs"]) == ["alpha", "zeta"]
        reports.append((figures_dir("smoke") / "REPORT.md").read_bytes())
    assert reports[0] == reports[1]


def test_sweep_points_never_overwrite_each_other_and_resume_checks_each(experiments, tmp_path):
    "The issue's case: `--sweep n=3,4` then `--resume`; each point has its folder, checked on its own."
    add_tab(experiments, "tab")
    figs, sweep = figures_dir("smoke"), runner.parse_sweeps(["n=3,4"])
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", sweeps=sweep)) == ["ok", "ok"]
    p3, p4 = figs / "sweeps" / "tab" / "n=3", figs / "sweeps" / "tab" / "n=4"
    assert len(read_manifest(p3 / "MANIFEST.json")["outputs"]) == 4 and len(read_manifest(p4 / "MANIFEST.json")["outputs"]) == 5
    assert (p3 / "tab_t0.csv").read_text() == "i,n\n0,3\n" and (p4 / "tab_t0.csv").read_text() == "i,n\n0,4\n"
    assert not (figs / "MANIFEST.json").exists(), "a sweep must not touch the profile's main outputs"
    assert "sweep point `tab[n=3]`" in (p3 / "REPORT.md").read_text() and read_manifest(p3 / "MANIFEST.json")["profile"] == "smoke"
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", sweeps=sweep, resume=True)) == ["skipped", "skipped"]
    (p4 / "tab_t1.csv").write_text("tampered")
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", sweeps=sweep, resume=True)) == ["skipped", "ok"]
    assert (p4 / "tab_t1.csv").read_text() == "i,n\n1,4\n"
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", resume=True)) == ["ok"]       # main folder: never ran


def test_resume_reads_the_manifest_not_the_state(experiments, tmp_path):
    add_tab(experiments, "tab")
    figs = figures_dir("smoke")
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke")) == ["ok"]
    (tmp_path / "runs" / "state.json").unlink()                       # the state is not what resume trusts
    res = _run(experiments, tmp_path, ["tab"], "smoke", resume=True)
    assert _st(res) == ["skipped"] and res[0]["error"].startswith("unchanged since run ")
    man = json.loads((figs / "MANIFEST.json").read_text())
    man["outputs"]["tab_t1"]["run_parameters"]["n"] = 9                # an output made with other parameters
    (figs / "MANIFEST.json").write_text(json.dumps(man))
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", resume=True)) == ["ok"]
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", {"n": 3}, resume=True)) == ["ok"]  # other parameters
    (tmp_path / "runs" / "state.json").write_text("{not json")          # a damaged state is ignored and rewritten
    assert _st(_run(experiments, tmp_path, ["tab"], "smoke", {"n": 3}, resume=True)) == ["skipped"]
