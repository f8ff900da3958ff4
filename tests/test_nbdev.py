"""The notebooks are the source: exported package in sync, library notebook tests, every experiment's smoke run."""
from __future__ import annotations
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest
from tokenlab.lab import results
from tokenlab.lab import runner
from tokenlab.lab.core import repo_root, figures_dir

ROOT = repo_root(Path(__file__).parent)
BIN = Path(sys.executable).parent
SMOKE_HANG_GUARD_S = 600   # per notebook: a hang guard, not a speed target (timings live in README/bench)


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


def test_smoke_profile_of_every_experiment(tmp_path, capsys):
    stems = list(runner.list_notebooks())
    if not stems: pytest.skip("no experiment notebooks in nbs/experiments yet")
    t0 = time.perf_counter()
    res = runner.run(None, "smoke", out_dir=tmp_path / "runs", jobs=min(2, os.cpu_count() or 1), progress=False,
                     echo=None, timeout=SMOKE_HANG_GUARD_S)
    wall = time.perf_counter() - t0
    with capsys.disabled():
        print("\n" + runner.wall_line(res, "smoke", wall) + ": "
              + ", ".join(f"{r['name']} {r['seconds']:.1f} s" for r in res))
    failed = [f"{r['name']}: {r['error']}" for r in res if r["status"] != "ok"]
    assert not failed, "; ".join(failed)
    man_file, rep_file = figures_dir("smoke") / "MANIFEST.json", figures_dir("smoke") / "REPORT.md"
    assert man_file.exists(), "no experiment registered any output"
    man, rep = json.loads(man_file.read_text()), rep_file.read_text()
    for o in man["outputs"].values():
        for f in o["files"]: assert (man_file.parent / f["path"]).exists(), f["path"]
        if o["kind"] != "claim": continue
        assert o["verdict"] in results.VERDICTS
        line = next((l for l in rep.splitlines() if results.md_cell(o["statement"]) in l), None)
        assert line and f"**{o['verdict']}**" in line, f"claim {o['id']} has no verdict in REPORT.md"


def test_nbdev_clean_keeps_parameters_tag(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_notebook
    nb = write_notebook(tmp_path / "x.ipynb", "n = 1", "print(n)")
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    p = subprocess.run([str(BIN / "nbdev_clean"), "--fname", str(nb)], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(nb.read_text())["cells"][0]["metadata"] == {"tags": ["parameters"]}
