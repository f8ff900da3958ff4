"""Shared pytest set-up: markers, and outputs redirected to temporary folders (tests never write figures/ or runs/)."""
from __future__ import annotations
import os, signal, subprocess, sys, textwrap
from pathlib import Path
import nbformat, pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")


# --- the two smoke runs start in the background as soon as the tests needing them are collected (see smoke.py) ---
SMOKE_USERS = {"smoke-jobs2": ("test_smoke_profile_of_every_experiment", "test_smoke_outputs_do_not_depend_on_jobs"),
               "smoke-jobs1": ("test_smoke_profile_with_one_job", "test_smoke_outputs_do_not_depend_on_jobs")}
_EAGER: list = []


def _start_smoke(config, nodeids) -> None:
    "Start (once) a background process per smoke run that a collected test needs, in the folder the workers share."
    if _EAGER or os.environ.get("TOKENLAB_EAGER_SMOKE", "1") == "0" or hasattr(config, "workerinput"): return
    names = [n for n, tests in SMOKE_USERS.items()
             if any(i.split("::")[0].endswith("test_nbdev.py") and i.split("::")[-1] in tests for i in nodeids)]
    if not names: return
    shared = config._tmp_path_factory.getbasetemp()     # = every xdist worker's basetemp.parent
    for name in names:
        log = open(shared / f"{name}.eager.log", "wb")
        _EAGER.append(subprocess.Popen([sys.executable, str(Path(__file__).parent / "smoke.py"), str(shared), name],
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _start_smoke(node.config, ids)


def pytest_collection_finish(session):
    if session.items: _start_smoke(session.config, [i.nodeid for i in session.items])


def pytest_sessionfinish(session, exitstatus):
    "An eager smoke run still going when the session ends (an early stop) is stopped with its kernels."
    for p in _EAGER:
        if p.poll() is None:
            try: os.killpg(p.pid, signal.SIGTERM); p.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try: os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError: pass


def pytest_terminal_summary(terminalreporter):
    "The browser test's screenshots and timings (its `browser` user property; works under xdist, where prints are lost)."
    lines = [v for r in terminalreporter.stats.get("passed", []) if r.when == "call"
             for k, v in getattr(r, "user_properties", ()) if k == "browser"]
    if lines:
        terminalreporter.write_sep("-", "browser test (tests/test_browser.py)")
        for line in lines: terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu: return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords: item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path_factory, monkeypatch):
    "TOKENLAB_FIGURES and TOKENLAB_RUNS point to fresh temporary folders; no results context leaks between tests."
    base = tmp_path_factory.mktemp("outputs")
    monkeypatch.setenv("TOKENLAB_FIGURES", str(base / "figures"))
    monkeypatch.setenv("TOKENLAB_RUNS", str(base / "runs"))
    monkeypatch.delenv("TOKENLAB_PROFILE", raising=False)
    try:
        from tokenlab.lab import results
        monkeypatch.setattr(results, "_CTX", None)
    except ImportError:
        pass
    yield base


def write_notebook(path: Path, params: str, *cells: str) -> Path:
    "Write a notebook with a `parameters` cell and code cells (sources dedented)."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(params).strip(), metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(textwrap.dedent(c).strip()) for c in cells]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def experiments(tmp_path):
    "A scratch experiments folder: `experiments.add(stem, params, *cells)`, `experiments.profiles(yaml_text)`."
    d = tmp_path / "experiments"
    d.mkdir()

    class Exp:
        dir = d
        def add(self, stem, params, *cells): return write_notebook(d / f"{stem}.ipynb", params, *cells)
        def profiles(self, text): (d / "profiles.yaml").write_text(textwrap.dedent(text))
    return Exp()
