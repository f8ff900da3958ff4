"""The `tokenlab` command: wiring of run / fetch / assets-md, exit codes, one-line errors."""
from __future__ import annotations
import subprocess, sys, types
from pathlib import Path
import pytest
import tokenlab
from tokenlab.lab.cli import main


def _script():
    exe = Path(sys.executable).parent / "tokenlab"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from tokenlab.lab.cli import main; sys.exit(main())"]


def test_console_script_one_line_error():
    p = subprocess.run([*_script(), "run", "--profile", "huge"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr == "tokenlab: error: unknown profile 'huge'; valid profiles: cpu, gpu, smoke\n"
    assert "Traceback" not in p.stderr + p.stdout


@pytest.mark.parametrize("args, msg", [
    (["run", "nope"], "unknown notebook 'nope'; valid notebooks: a, b"),
    (["run", "-p", "zzz=1"], "notebook 'a' has no parameter 'zzz'; valid parameters: n, profile"),
    (["run", "-p", "oops"], "invalid parameter 'oops'; expected key=value"),
    (["run", "--sweep", "n="], "sweep 'n=' has no values; expected key=v1,v2"),
])
def test_user_errors(experiments, capsys, args, msg):
    experiments.add("a", "profile = 'smoke'\nn = 1", "x = 1")
    experiments.add("b", "profile = 'smoke'\nn = 1", "x = 1")
    assert main([*args, "--dir", str(experiments.dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"tokenlab: error: {msg}\n"


def test_run_exit_codes_and_list(experiments, capsys):
    experiments.add("a", "profile = 'smoke'\nn = 1", "assert n == 1")
    experiments.profiles("a:\n  cpu: {n: 2}\n")
    assert main(["run", "--list", "--dir", str(experiments.dir)]) == 0
    out = capsys.readouterr().out
    assert "| a " in out and "cpu" in out
    assert main(["run", "--dir", str(experiments.dir)]) == 0
    assert "smoke profile: 1 notebook in " in capsys.readouterr().out
    assert main(["run", "--profile", "cpu", "--dir", str(experiments.dir)]) == 1
    out = capsys.readouterr().out
    assert "AssertionError" in out and "(1 failed)" in out


@pytest.fixture
def fake_assets(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(fetch=lambda **kw: calls.append(("fetch", kw)) or [],
                                 write_assets_md=lambda: calls.append(("md", {})) or Path("data/ASSETS.md"))
    monkeypatch.setitem(sys.modules, "tokenlab.lab.assets", fake)
    monkeypatch.setattr(tokenlab.lab, "assets", fake, raising=False)
    return calls


def test_fetch_wiring(fake_assets):
    assert main(["fetch"]) == 0
    assert main(["fetch", "--tier", "models", "--name", "smollm2", "--name", "udhr"]) == 0
    assert main(["assets-md"]) == 0
    assert fake_assets == [("fetch", {"tier": "core", "names": None, "progress": True}),
                           ("fetch", {"tier": "models", "names": ["smollm2", "udhr"], "progress": True}),
                           ("md", {})]


def test_fetch_error_is_one_line(monkeypatch, capsys):
    from tokenlab.lab.core import TokenlabError
    def boom(**kw): raise TokenlabError("unknown asset 'x'; valid assets: udhr")
    fake = types.SimpleNamespace(fetch=boom)
    monkeypatch.setitem(sys.modules, "tokenlab.lab.assets", fake)
    monkeypatch.setattr(tokenlab.lab, "assets", fake, raising=False)
    assert main(["fetch", "--name", "x"]) == 2
    assert capsys.readouterr().err == "tokenlab: error: unknown asset 'x'; valid assets: udhr\n"


def test_bad_tier_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as e: main(["fetch", "--tier", "everything"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
