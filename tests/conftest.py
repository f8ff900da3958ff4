"""Shared pytest set-up: markers, and outputs redirected to temporary folders (tests never write figures/ or runs/)."""
from __future__ import annotations
import textwrap
from pathlib import Path
import nbformat, pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")


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
