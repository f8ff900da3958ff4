"""Hostile input for the CLI and the runner: every case at the top of issue 10, junk values, unknown names, broken
or unwritable files, signals. Each must give a clear one-line refusal or the right result, never a traceback, and
never lose or mix earlier outputs."""
from __future__ import annotations
import json, math, os, re, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
from tokenlab.lab import results, runner
from tokenlab.lab.cli import main
from tokenlab.lab.core import TokenlabError, figures_dir

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tokenlab"]

TAB = """
import pandas as pd
from tokenlab.lab import results
results.init("tab", profile, {"n": n}, 0)
for i in range(n): results.save_table(pd.DataFrame({"i": [i], "n": [n]}), f"tab_t{i}", f"table {i} of {n}")
results.claim("tab_c", "n is small", n, "< 5", n < 5, "test")
if fail_after: raise ValueError(f"failed after writing, n={n}")
"""

SLOW = """
import os, time, pandas as pd
from tokenlab.lab import results
results.init(NAME, profile, {"value": value}, 0)
results.save_table(pd.DataFrame({"v": [value]}), NAME + "_t", "a table")
if pidfile: open(pidfile + ".tmp", "w").write(str(os.getpid())); os.replace(pidfile + ".tmp", pidfile)
time.sleep(sleep)
if late: open(late, "w").write("the kernel outlived the runner")
"""
SLOW_PARAMS = "profile = 'smoke'\nvalue = 1\nsleep = 0.0\npidfile = ''\nlate = ''"


def snapshot(d: Path) -> dict:
    "Every published file under `d` (bytes), without lock files and stages."
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*"))
            if f.is_file() and not f.name.endswith(".lock") and ".staging" not in f.parts}


def cli(exp, *args, env=None, **kw) -> subprocess.Popen:
    "`python -m tokenlab run --dir <exp> ...` as a child process (stdout and stderr together)."
    return subprocess.Popen([*CLI, "run", "--dir", str(exp.dir), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **(env or {})}, **kw)


def one_line_error(capsys) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert out.err.count("\n") == 1 and out.err.startswith("tokenlab: error: "), out.err
    return out.err[len("tokenlab: error: "):-1]


def alive(pid: int) -> bool:
    "True if `pid` exists and is not a zombie."
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError): return False


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists(): return int(path.read_text())
        if proc.poll() is not None: pytest.fail(f"the runner ended early: {proc.communicate()[0]}")
        time.sleep(0.05)
    pytest.fail(f"{path} never appeared")


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not alive(pid): return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- the cases listed at the top of the issue

def test_failed_run_publishes_nothing_and_says_so(experiments, tmp_path):
    "`run tokenizer_parity -p languages=5 -p n_boot=0` (fails): nothing of the failed run is published."
    experiments.add("tab", "profile = 'smoke'\nn = 2\nfail_after = False", TAB)
    figs = figures_dir("smoke")
    first = runner.run(["tab"], "smoke", exp_dir=experiments.dir, out_dir=tmp_path / "runs", progress=False, echo=None)
    assert first[0]["status"] == "ok"
    before = snapshot(figs)
    p = cli(experiments, "tab", "-p", "n=3", "-p", "fail_after=true", env={"TOKENLAB_RUNS": str(tmp_path / "runs")})
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 1 and "ValueError: failed after writing, n=3" in out and "Traceback" not in out, out
    after = snapshot(figs)
    failed = after.pop("FAILED_RUNS.md").decode()
    assert after == before, "a failed run changed published files"
    assert re.search(r"^- `tab` · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC · run `\d{8}T\d{6}Z-[0-9a-f]{6}` · n=3, fail_after=True · "
                     r"ValueError: failed after writing, n=3$", failed, re.M), failed
    # the next success removes the line; files and REPORT.md come back byte for byte (MANIFEST.json: timings, run id)
    again = runner.run(["tab"], "smoke", exp_dir=experiments.dir, out_dir=tmp_path / "runs", progress=False, echo=None)
    assert again[0]["status"] == "ok"
    now = snapshot(figs)
    assert "FAILED_RUNS.md" not in now
    assert {k: v for k, v in now.items() if k != "MANIFEST.json"} == {k: v for k, v in before.items() if k != "MANIFEST.json"}


def _slow(experiments, *stems):
    for s in stems: experiments.add(s, SLOW_PARAMS, f"NAME = {s!r}\n" + SLOW)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_batch_within_5_s(experiments, tmp_path, sig):
    _slow(experiments, "slow", "queued")
    figs, runs, tmp = figures_dir("smoke"), tmp_path / "runs", tmp_path / "tmp"
    tmp.mkdir()
    ok = runner.run(["slow"], "smoke", exp_dir=experiments.dir, out_dir=runs, progress=False, echo=None)
    assert ok[0]["status"] == "ok"
    before = snapshot(figs)
    pidfile = tmp_path / "kernel.pid"
    p = cli(experiments, "slow", "queued", "-p", "value=2", "-p", "sleep=300", "-p", f"pidfile={pidfile}",
            env={"TOKENLAB_RUNS": str(runs), "TMPDIR": str(tmp)})
    kernel = wait_for(pidfile, p)
    t0 = time.perf_counter()
    p.send_signal(sig)
    out = p.communicate(timeout=60)[0]
    latency = time.perf_counter() - t0
    print(f"\n{sig.name}: the batch stopped {latency:.2f} s after the signal")
    assert latency < 5, f"stopped after {latency:.1f} s"
    assert p.returncode == 128 + sig, (p.returncode, out)
    assert "Traceback" not in out and f"Stopped by {sig.name}: finished 0, interrupted 1, not run 1" in out, out
    assert re.search(r"\| slow +\|.*\| interrupted +\|", out) and re.search(r"\| queued +\|.*\| not run +\|", out), out
    assert gone(kernel), "the kernel survived the interrupt"
    state = json.loads((runs / "smoke" / "state.json").read_text())            # TOKENLAB_RUNS/<profile>
    assert state["slow"]["status"] == "interrupted" and state["slow"]["error"] == f"interrupted by {sig.name}"
    assert "queued" not in state
    after = snapshot(figs)
    failed = after.pop("FAILED_RUNS.md").decode()
    assert after == before and f"- `slow` · " in failed and f"interrupted by {sig.name}" in failed
    assert not list(tmp.iterdir()), f"temporary files left: {list(tmp.iterdir())}"
    assert not list(figs.glob(".staging/*"))


def test_sigkill_of_the_runner_takes_its_kernels_along(experiments, tmp_path):
    _slow(experiments, "slow")
    figs, tmp = figures_dir("smoke"), tmp_path / "tmp"
    tmp.mkdir()
    assert runner.run(["slow"], "smoke", exp_dir=experiments.dir, out_dir=tmp_path / "runs", progress=False,
                      echo=None)[0]["status"] == "ok"
    before = snapshot(figs)
    pidfile, late = tmp_path / "kernel.pid", tmp_path / "late.txt"
    p = cli(experiments, "slow", "-p", "value=2", "-p", "sleep=4", "-p", f"pidfile={pidfile}", "-p", f"late={late}",
            env={"TOKENLAB_RUNS": str(tmp_path / "runs"), "TMPDIR": str(tmp)})
    kernel = wait_for(pidfile, p)
    child = int(Path(f"/proc/{kernel}/stat").read_text().rsplit(")", 1)[1].split()[1])     # papermill's process
    p.kill(); p.communicate(timeout=30)
    t0 = time.perf_counter()
    assert gone(kernel) and gone(child), "kernel or papermill child survived the runner"
    print(f"\nSIGKILL: kernel and child gone {time.perf_counter() - t0:.2f} s after the runner died")
    time.sleep(5)                                         # past the notebook's sleep: a live kernel would write `late`
    assert not late.exists(), "the kernel kept running after the runner was killed"
    for _ in range(100):                                  # the watchdog removes the temporary folders
        if not list(tmp.iterdir()) and not list(figs.glob(".staging/*")): break
        time.sleep(0.1)
    assert not list(tmp.iterdir()), f"temporary files left: {list(tmp.iterdir())}"
    assert not list(figs.glob(".staging/*")), "a stage was left in figures/"
    after = snapshot(figs)
    failed = after.pop("FAILED_RUNS.md").decode()             # written by the watchdog
    assert after == before and "- `slow` · " in failed and "the runner was killed" in failed


def test_typed_parameters_refused_before_anything_runs(capsys):
    "`languages=abc` fails at once, in one line (it used to fail inside the notebook after 30 s)."
    t0 = time.perf_counter()
    assert main(["run", "tokenizer_parity", "-p", "languages=abc"]) == 2
    assert one_line_error(capsys) == "notebook 'tokenizer_parity': parameter 'languages' expects an integer or 'all', got 'abc' (-p)"
    assert time.perf_counter() - t0 < 10
    assert not figures_dir("smoke").exists() and not runner.runs_dir("smoke").exists()


def test_scalar_for_a_list_is_a_one_item_list():
    "`tokenizers=gpt2` used to be split into letters."
    job = runner.plan(["tokenizer_parity"], "smoke", {"tokenizers": "gpt2"})[0]
    assert job.params["tokenizers"] == ["gpt2"]
    assert runner.plan(["tokenizer_parity"], "smoke", {"tokenizers": "all"})[0].params["tokenizers"] == "all"
    sweep = runner.plan(["tokenizer_parity"], "smoke", sweeps=runner.parse_sweeps(["tokenizers=gpt2,chars"]))
    assert [j.params["tokenizers"] for j in sweep] == [["gpt2"], ["chars"]]
    for value, want in (("[1, 2]", [1, 2]), ("3", [3]), ("all", "all")):       # default "all": "all" or a list
        assert runner.plan(["tokenizer_parity"], "smoke", {"articles": runner.parse_assignment(f"a={value}")[1]})[0].params["articles"] == want


@pytest.mark.parametrize("args, msg", [
    (["-p", "profile=cpu"], "'profile' is chosen with --profile, not with -p or --sweep"),
    (["--sweep", "profile=cpu,gpu"], "'profile' is chosen with --profile, not with -p or --sweep"),
    (["--jobs", "0"], "--jobs must be a whole number >= 1, got 0"),
    (["--jobs", "-3"], "--jobs must be a whole number >= 1, got -3"),
    (["--timeout", "-1"], "--timeout must be a positive number of seconds, got -1.0"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0.0"),
    (["--timeout", "nan"], "--timeout must be a positive number of seconds, got nan"),
    (["--timeout", "inf"], "--timeout must be a positive number of seconds, got inf"),
])
def test_issue_cli_refusals(capsys, args, msg):
    assert main(["run", "tokenizer_parity", *args]) == 2
    assert one_line_error(capsys) == msg


def test_manifest_is_strict_json_and_reserved_ids_refused():
    results.init("nb", "strict", {"x": float("nan")}, 0)
    results.claim("c", "s", float("nan"), "> 1", "inconclusive", "src")
    results.claim("d", "s", np.float64("inf"), "> 1", "inconclusive", "src")
    text = results.manifest_path().read_text()
    def refuse(c): raise ValueError(c)
    man = json.loads(text, parse_constant=refuse)                     # no NaN / Infinity tokens
    assert man["outputs"]["c"]["measured"] is None and "measured was NaN, stored as null" in man["outputs"]["c"]["notes"]
    assert "measured was Infinity, stored as null" in man["outputs"]["d"]["notes"]
    assert "parameters.x was NaN, stored as null" in man["outputs"]["c"]["notes"]
    report = results.report_path().read_bytes()
    df = pd.DataFrame({"a": [1]})
    for bad in ("REPORT", "report", "Manifest", "MANIFEST.json", "failed_runs"):
        with pytest.raises(TokenlabError, match="would clash with the folder's own files"): results.save_table(df, bad, "x")
        with pytest.raises(TokenlabError, match="would clash"): results.claim(bad, "s", 1, 1, True, "src")
    assert results.report_path().read_bytes() == report and not list(results.manifest_path().parent.glob("*.csv"))


@pytest.mark.parametrize("module", ["tokenlab", "tokenlab.cli", "tokenlab.lab.cli"])
def test_python_m_runs_the_command(experiments, module):
    "`python -m tokenlab.cli run ...` used to do nothing and exit 0."
    experiments.add("a", "profile = 'smoke'\nn = 1", "x = 1")
    p = subprocess.run([sys.executable, "-m", module, "run", "--list", "--dir", str(experiments.dir)], capture_output=True, text=True)
    assert p.returncode == 0 and "| a " in p.stdout and "an integer" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", module, "run", "--dir", str(experiments.dir), "-p", "n=x"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr == "tokenlab: error: notebook 'a': parameter 'n' expects an integer, got 'x' (-p)\n"


# ---------------------------------------------------------------- junk values, unknown names

@pytest.fixture
def two(experiments):
    experiments.add("a", "profile = 'smoke'\nn = 1\nlr = 0.1\nflag = False\nnames = ['x']\nlangs = 3", "x = 1")
    experiments.add("b", "profile = 'smoke'\nn = 1", "x = 1")
    experiments.profiles("a:\n  cpu: {langs: all}\n")
    return experiments


@pytest.mark.parametrize("args, msg", [
    (["nope"], "unknown notebook 'nope'; valid notebooks: a, b"),
    (["a.ipynb", "zz"], "unknown notebook 'zz'; valid notebooks: a, b"),
    (["--profile", "laptop"], "unknown profile 'laptop'; valid profiles: cpu, gpu, smoke"),
    (["--profile", ""], "unknown profile ''; valid profiles: cpu, gpu, smoke"),
    (["-p", "n"], "invalid parameter 'n'; expected key=value"),
    (["-p", "=3"], "invalid parameter '=3'; expected key=value"),
    (["-p", "1n=3"], "invalid parameter '1n=3'; expected key=value"),
    (["-p", "n=[1"], "cannot parse the value of 'n=[1': while parsing a flow sequence"),
    (["-p", "zz=1"], "notebook 'a' has no parameter 'zz'; valid parameters: flag, langs, lr, n, names, profile"),
    (["a", "-p", "n=2.5"], "notebook 'a': parameter 'n' expects an integer, got 2.5 (-p)"),
    (["a", "-p", "n=true"], "notebook 'a': parameter 'n' expects an integer, got True (-p)"),
    (["a", "-p", "n=[1, 2]"], "notebook 'a': parameter 'n' expects an integer, got [1, 2] (-p)"),
    (["a", "-p", "lr=fast"], "notebook 'a': parameter 'lr' expects a number, got 'fast' (-p)"),
    (["a", "-p", "lr=.nan"], "notebook 'a': parameter 'lr' expects a number, got nan (-p)"),
    (["a", "-p", "flag=maybe"], "notebook 'a': parameter 'flag' expects true or false, got 'maybe' (-p)"),
    (["a", "-p", "names={x: 1}"], "notebook 'a': parameter 'names' expects a list of strings, got {'x': 1} (-p)"),
    (["a", "-p", "langs=some"], "notebook 'a': parameter 'langs' expects an integer or 'all', got 'some' (-p)"),
    (["a", "--sweep", "n="], "sweep 'n=' has no values; expected key=v1,v2"),
    (["a", "--sweep", "n=1,x"], "notebook 'a': parameter 'n' expects an integer, got 'x' (--sweep)"),
    (["a", "-p", "n=1e3"], "notebook 'a': parameter 'n' expects an integer, got '1e3' (-p)"),
])
def test_junk_values_are_one_line_refusals(two, capsys, args, msg):
    assert main(["run", *args, "--dir", str(two.dir)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(msg), err
    assert not runner.runs_dir("smoke").exists(), "a refusal must come before anything runs"


def test_values_that_are_fine_are_typed(two):
    job = runner.plan(["a"], "smoke", {"n": "150_000", "lr": 1, "names": "y", "langs": "all"}, exp_dir=two.dir)[0]
    assert job.params == {"n": 150000, "lr": 1.0, "names": ["y"], "langs": "all", "profile": "smoke"}
    assert isinstance(job.params["lr"], float)


def test_experiments_folder_missing_or_empty(tmp_path, capsys):
    assert main(["run", "--dir", str(tmp_path / "nowhere")]) == 2
    assert one_line_error(capsys).endswith("does not exist; pass --dir or set TOKENLAB_EXPERIMENTS")
    (tmp_path / "empty").mkdir()
    assert main(["run", "--dir", str(tmp_path / "empty")]) == 2
    assert one_line_error(capsys).startswith("no experiment notebooks in ")


def test_broken_notebook_file(experiments, capsys):
    experiments.add("a", "profile = 'smoke'", "x = 1")
    (experiments.dir / "broken.ipynb").write_text("{this is not json")
    assert main(["run", "--dir", str(experiments.dir)]) == 2
    assert one_line_error(capsys).startswith("cannot read notebook broken.ipynb: ")


@pytest.mark.parametrize("content, msg", [
    ("a:\n  smoke: {n: caf\u00e9}\n".encode("latin-1"), "is not UTF-8 text (byte 19); save it as UTF-8"),
    (b"a:\n  smoke: {n: [1}\n", "is not valid YAML: expected ',' or ']', but got '}' (line 2)"),
    (b"a: [1, 2]\n", "expected a mapping {notebook: {profile: {param: value}}}"),
    (b"a:\n  smoke: [1, 2]\n", "expected a mapping {notebook: {profile: {param: value}}}"),
    (b"- a\n- b\n", "expected a mapping {notebook: {profile: {param: value}}}"),
    (b"a:\n  smoke: {n: 2.5}\n", "notebook 'a': parameter 'n' expects an integer, got 2.5 (profiles.yaml smoke)"),
])
def test_bad_profiles_yaml(experiments, capsys, content, msg):
    experiments.add("a", "profile = 'smoke'\nn = 1", "x = 1")
    (experiments.dir / "profiles.yaml").write_bytes(content)
    assert main(["run", "--dir", str(experiments.dir)]) == 2
    assert one_line_error(capsys).endswith(msg)


def test_missing_profiles_yaml_means_notebook_defaults(experiments):
    experiments.add("a", "profile = 'smoke'\nn = 4", "x = 1")
    assert not (experiments.dir / "profiles.yaml").exists()
    assert runner.plan(None, "cpu", exp_dir=experiments.dir)[0].params == {"profile": "cpu"}


def test_unwritable_figures_or_runs_folder(experiments, tmp_path, monkeypatch, capsys):
    "A folder that cannot be created or written is one line naming the path and the variable, before anything runs."
    experiments.add("a", "profile = 'smoke'", "x = 1")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TOKENLAB_FIGURES", str(blocker / "figures"))
    assert main(["run", "--dir", str(experiments.dir)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"cannot write to the figures folder {blocker}/figures/smoke: ") and err.endswith(
        "; set TOKENLAB_FIGURES to a writable folder"), err
    monkeypatch.setenv("TOKENLAB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("TOKENLAB_RUNS", str(blocker / "runs"))
    assert main(["run", "--dir", str(experiments.dir)]) == 2
    assert one_line_error(capsys).endswith("; set TOKENLAB_RUNS to a writable folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_figures_folder(experiments, tmp_path, monkeypatch, capsys):
    experiments.add("a", "profile = 'smoke'", "x = 1")
    ro = tmp_path / "ro"; (ro / "smoke").mkdir(parents=True); (ro / "smoke").chmod(0o555)
    monkeypatch.setenv("TOKENLAB_FIGURES", str(ro))
    try:
        assert main(["run", "--dir", str(experiments.dir)]) == 2
        assert "cannot write to the figures folder" in one_line_error(capsys)
    finally: (ro / "smoke").chmod(0o755)


def test_damaged_manifest_is_refused_before_running(experiments, capsys):
    experiments.add("a", "profile = 'smoke'", "x = 1")
    d = figures_dir("smoke"); d.mkdir(parents=True)
    (d / "MANIFEST.json").write_text('{"outputs": [')
    assert main(["run", "--dir", str(experiments.dir)]) == 2
    assert one_line_error(capsys).endswith("is not a valid manifest (Expecting value: line 1 column 14 (char 13)); "
                                           "repair it or move it away")
    assert (d / "MANIFEST.json").read_text() == '{"outputs": ['


def test_command_line_junk(capsys):
    for argv, part in ([[], "the following arguments are required"], [["run", "--jobs", "x"], "invalid int value: 'x'"],
                       [["run", "--timeout", "soon"], "invalid float value: 'soon'"], [["frobnicate"], "invalid choice"]):
        with pytest.raises(SystemExit) as e: main(argv)
        assert e.value.code == 2
        assert part in one_line_error(capsys)


def test_api_refuses_bad_limits(experiments):
    experiments.add("a", "profile = 'smoke'", "x = 1")
    for kw in ({"jobs": 0}, {"jobs": True}, {"jobs": 1.5}, {"timeout": 0}, {"timeout": -5}, {"timeout": "x"}):
        with pytest.raises(TokenlabError, match="must be"): runner.run(exp_dir=experiments.dir, progress=False, echo=None, **kw)


def test_a_dying_kernel_is_a_failure_not_a_traceback(experiments, tmp_path, capsys):
    experiments.add("die", "profile = 'smoke'", "import os\nos._exit(3)")
    rc = main(["run", "--dir", str(experiments.dir)])
    out = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out.out + out.err and "| die " in out.out and "failed" in out.out
    assert "- `die` · " in (figures_dir("smoke") / "FAILED_RUNS.md").read_text()


def test_results_api_refusals():
    with pytest.raises(TokenlabError, match="invalid profile"): results.init("nb", "../x")
    results.init("nb", "ok", {}, 0)
    for bad in ("../evil", "", "a b", ".hidden", None):
        with pytest.raises(TokenlabError, match="invalid output id"): results.save_table(pd.DataFrame({"a": [1]}), bad, "x")
    with pytest.raises(TokenlabError, match="unknown verdict"): results.claim("c", "s", 1, 1, "sure", "src")
