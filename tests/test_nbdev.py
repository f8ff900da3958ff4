"""The notebooks are the source: exported package in sync, library notebook tests, every experiment's smoke run."""
from __future__ import annotations
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from tokenlab.lab import results
from tokenlab.lab import runner
from tokenlab.lab.core import repo_root
import smoke

ROOT = repo_root(Path(__file__).parent)
BIN = Path(sys.executable).parent


def test_exported_package_matches_notebooks(tmp_path):
    for name in ("nbs", "tokenlab"): shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    for stale in (tmp_path / "tokenlab").rglob("*.py"):       # a module whose notebook is gone must fail too
        if stale.name != "__init__.py" or stale.parent != tmp_path / "tokenlab": stale.unlink()
    p = subprocess.run([str(BIN / "nbdev_export")], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    fresh = {str(f.relative_to(tmp_path)): f.read_text() for f in (tmp_path / "tokenlab").rglob("*.py")}
    have = {str(f.relative_to(ROOT)): f.read_text() for f in (ROOT / "tokenlab").rglob("*.py")}
    differ = sorted(n for n in fresh.keys() | have.keys() if fresh.get(n) != have.get(n))
    assert not differ, f"tokenlab/ is out of sync with nbs/ in: {', '.join(differ)}; run `make export` and commit"


def test_library_notebooks_pass_nbdev_test():
    "nbdev_test over nbs/*.ipynb; nbs/experiments/ (papermill notebooks) is skipped."
    cmd = [str(BIN / "nbdev_test"), "--path", "nbs", "--skip_folder_re", "^(experiments|[_.].*)$", "--timing"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "experiments" not in p.stdout + p.stderr


def _shared(tmp_path_factory) -> Path:
    "The folder every pytest-xdist worker (and the controller) shares: the controller's base temporary folder."
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture
def smoke_jobs2(tmp_path_factory):
    "The suite's smoke run of every experiment, two at a time (also the first run of the reproduction test)."
    if not runner.list_notebooks(): pytest.skip("no experiment notebooks in nbs/experiments yet")
    return smoke.once(_shared(tmp_path_factory), "smoke-jobs2")


@pytest.fixture
def smoke_jobs1(tmp_path_factory):
    "A second smoke run, one notebook at a time, into fresh folders (the reproduction test's second run)."
    if not runner.list_notebooks(): pytest.skip("no experiment notebooks in nbs/experiments yet")
    return smoke.once(_shared(tmp_path_factory), "smoke-jobs1")


def _all_ok(label: str, run: dict, capsys) -> None:
    "Print the run's wall line and per-notebook seconds; every notebook must have succeeded."
    res, wall = run["res"], run["wall"]
    with capsys.disabled():
        print(f"\n{label}: " + runner.wall_line(res, "smoke", wall) + ": "
              + ", ".join(f"{r['name']} {r['seconds']:.1f} s" for r in res))
    failed = [f"{r['name']}: {r['error']}" for r in res if r["status"] != "ok"]
    assert not failed, "; ".join(failed)


def test_smoke_profile_of_every_experiment(smoke_jobs2, capsys):
    _all_ok("--jobs 2", smoke_jobs2, capsys)
    res, figs = smoke_jobs2["res"], Path(smoke_jobs2["figs"])
    man_file, rep_file = figs / "MANIFEST.json", figs / "REPORT.md"
    assert man_file.exists(), "no experiment registered any output"
    man, rep = json.loads(man_file.read_text()), rep_file.read_text()
    for o in man["outputs"].values():
        for f in o["files"]: assert (man_file.parent / f["path"]).exists(), f["path"]
        if o["kind"] != "claim": continue
        assert o["verdict"] in results.VERDICTS
        line = next((l for l in rep.splitlines() if results.md_cell(o["statement"]) in l), None)
        assert line and f"**{o['verdict']}**" in line, f"claim {o['id']} has no verdict in REPORT.md"
    assert sorted(man["runs"]) == sorted(r["name"] for r in res)
    assert {o["run_id"] for o in man["outputs"].values()} <= {r["run_id"] for r in man["runs"].values()}
    for name, run in man["runs"].items():            # each executed notebook published, scrubbed, beside the figures
        nb = run["executed_notebook"]
        assert nb["path"] == f"notebooks/{name}.ipynb" and results.sha256_file(figs / nb["path"]) == nb["sha256"]
        assert f"- [`{name}`](notebooks/{name}.ipynb)" in rep


def test_smoke_profile_with_one_job(smoke_jobs1, capsys):
    _all_ok("--jobs 1", smoke_jobs1, capsys)


def output_hashes(figs: Path) -> dict[str, str]:
    "sha256 of every published output (CSV, MD, PNG, SVG ...), of REPORT.md and of notebooks/*.ipynb; MANIFEST.json holds timings, left out."
    from tokenlab.lab.core import sha256_file
    return {str(f.relative_to(figs)): sha256_file(f) for f in sorted(figs.rglob("*")) if f.is_file()
            and f.name not in ("MANIFEST.json", ".MANIFEST.json.lock") and ".staging" not in f.parts}


def test_smoke_outputs_do_not_depend_on_jobs(smoke_jobs2, smoke_jobs1):
    "Every output of the smoke profile, REPORT.md and the executed notebooks, byte for byte the same with --jobs 2 and --jobs 1."
    figs2, figs1 = Path(smoke_jobs2["figs"]), Path(smoke_jobs1["figs"])
    first, second = output_hashes(figs2), output_hashes(figs1)
    assert "REPORT.md" in first and any(k.endswith(".png") for k in first) and any(k.endswith(".csv") for k in first)
    assert sum(k.startswith("notebooks/") and k.endswith(".ipynb") for k in first) == len(smoke_jobs2["res"])
    differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert not differ, f"{len(differ)} of {len(first)} outputs differ between --jobs 2 and --jobs 1: {', '.join(differ)}"
    m1, m2 = (stable_manifest(json.loads((f / "MANIFEST.json").read_text())) for f in (figs2, figs1))
    assert m1 == m2, "MANIFEST.json differs in more than timings, dates, commit, run ids, device and versions"


VOLATILE = {"seconds", "finished", "run_id", "git", "device", "packages"}


def stable_manifest(man: dict) -> dict:
    "The manifest without what may differ between two runs: timings, dates, commit, run ids, device, versions."
    strip = lambda d: {k: v for k, v in d.items() if k not in VOLATILE}
    return {**man, "outputs": {i: strip(e) for i, e in man["outputs"].items()},
            "runs": {n: strip(r) for n, r in man.get("runs", {}).items()}}


def test_nbdev_clean_keeps_parameters_tag(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_notebook
    nb = write_notebook(tmp_path / "x.ipynb", "n = 1", "print(n)")
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    p = subprocess.run([str(BIN / "nbdev_clean"), "--fname", str(nb)], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(nb.read_text())["cells"][0]["metadata"] == {"tags": ["parameters"]}
