"""tokenlab.lab.results: deterministic atomic outputs, the manifest, the report, and a run killed mid-write."""
from __future__ import annotations
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tokenlab.lab import results
from tokenlab.lab import runner
from tokenlab.lab.core import TokenlabError, figures_dir, sha256_file


def _fig():
    fig, ax = plt.subplots()
    ax.plot(np.arange(10), np.arange(10) ** 2, label="squares"); ax.legend(); ax.set_title("t")
    return fig


def test_outside_a_run_profile_from_env(monkeypatch):
    assert results.context()["profile"] == "smoke"
    monkeypatch.setenv("TOKENLAB_PROFILE", "cpu")
    assert results.manifest_path() == figures_dir("cpu") / "MANIFEST.json"
    assert results.report_path().parent == figures_dir("cpu")


def test_figures_are_deterministic_across_processes():
    results.init("t", "det", {}, 0)
    png = results.savefig(_fig(), "sq", "Squares.")
    code = ("import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt, numpy as np\n"
            "from tokenlab.lab import results\nresults.init('t', 'det2', {}, 0)\n"
            "fig, ax = plt.subplots(); ax.plot(np.arange(10), np.arange(10) ** 2, label='squares'); ax.legend(); "
            "ax.set_title('t')\nprint(results.savefig(fig, 'sq', 'Squares.'))")
    other = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    assert other != png
    assert other.read_bytes() == png.read_bytes()
    assert other.with_suffix(".svg").read_bytes() == png.with_suffix(".svg").read_bytes()
    svg = png.with_suffix(".svg").read_text()
    assert "<dc:date>" not in svg
    assert b"Software" not in png.read_bytes()


def test_tables_csv_and_markdown():
    results.init("t", "tab", {"a": 1}, 0)
    df = pd.DataFrame({"lang": ["en", "fr"], "premium": [1.0, 1.23456789]}).set_index("lang")
    csv = results.save_table(df, "prem", "Premiums.")
    assert csv.read_text() == "lang,premium\nen,1.0\nfr,1.23456789\n"
    md = csv.with_suffix(".md").read_text()
    assert "| lang" in md and "1.235" in md and "1.23456789" not in md
    results.save_table(df, "prem3", "x", floatfmt=".2f")
    assert "1.23" in (csv.parent / "prem3.md").read_text()


def test_claims_verdicts():
    results.init("t", "cl", {}, 0)
    assert results.claim("a", "s", 1.5, ">1", True, "P")["verdict"] == "holds"
    assert results.claim("b", "s", 0.5, ">1", np.bool_(False), "P")["verdict"] == "not reproduced"
    assert results.claim("c", "s", np.float64(2.5), ">1", "direction only", "P")["measured"] == 2.5
    with pytest.raises(TokenlabError, match="^unknown verdict 'yes'; valid verdicts: direction only, holds, "
                                            "inconclusive, not reproduced, not tested, reversed$"):
        results.claim("d", "s", 1, 1, "yes", "P")


def test_manifest_entries_replaced_and_report():
    results.init("nb1", "man", {"n": np.int64(3), "names": ["a"]}, 7)
    results.save_table(pd.DataFrame({"x": [1]}), "t1", "First.")
    results.savefig(_fig(), "f1", "A figure.")
    results.claim("c1", "claim | with pipe", 2.0, "> 1", "reversed", "Paper 2024")
    results.save_table(pd.DataFrame({"x": [2]}), "t1", "First, again.")
    man = json.loads(results.manifest_path().read_text())
    assert list(man["outputs"]) == ["t1", "f1", "c1"]
    e = man["outputs"]["t1"]
    assert e["caption"] == "First, again." and e["parameters"] == {"n": 3, "names": ["a"]} and e["seed"] == 7
    assert [f["path"] for f in e["files"]] == ["t1.csv", "t1.md"]
    assert e["files"][0]["sha256"] == sha256_file(results.manifest_path().parent / "t1.csv")
    assert set(e["packages"]) == set(results.PACKAGES) and e["device"]["device"]
    assert set(e["git"]) == {"commit", "dirty"} and e["seconds"] >= 0 and e["notebook"] == "nb1"
    rep = results.report_path().read_text()
    assert "| Paper 2024 | claim \\| with pipe | > 1 | 2.0 | - | **reversed** |" in rep
    assert "![A figure.](f1.png)" in rep and "[CSV](t1.csv)" in rep and "[SVG](f1.svg)" in rep
    assert rep == results.render_report(man)


WRITER = """
import sys
from tokenlab.lab import results as r
r._device = dict          # skip the torch import of the device probe: this test is about the lock
i = int(sys.argv[1]); r.init(f"nb{i}", "par", {}, 0)
for k in range(3): r.claim(f"c{i}_{k}", "s", k, "e", True, "src")
"""


def test_parallel_writers_lose_nothing():
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)]) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    man = json.loads((figures_dir("par") / "MANIFEST.json").read_text())
    assert sorted(man["outputs"]) == sorted(f"c{i}_{k}" for i in range(4) for k in range(3))
    assert (figures_dir("par") / "REPORT.md").read_text().count("**holds**") == 12


KILLME = """
import os, numpy as np, pandas as pd
from tokenlab.lab import results
results.init("killme", profile, {"rows": rows}, 0)
if pidfile: open(pidfile, "w").write(str(os.getpid()))
df = pd.DataFrame(np.random.rand(rows, 8), columns=list("abcdefgh"))
results.save_table(df, "big", "A table that may be large.")
"""


def test_killed_mid_write_leaves_previous_outputs_intact(experiments, tmp_path):
    experiments.add("killme", "profile = 'smoke'\nrows = 10\npidfile = ''", KILLME)
    out = figures_dir("smoke")

    def first_run():
        res = runner.run(["killme"], "smoke", exp_dir=experiments.dir, out_dir=tmp_path / "runs", progress=False,
                         echo=None)
        assert res[0]["status"] == "ok", res
        return (out / "big.csv").read_bytes(), (out / "MANIFEST.json").read_bytes()

    before = first_run()
    cli = "import sys; from tokenlab.lab.cli import main; sys.exit(main(sys.argv[1:]))"
    for rows in (600_000, 1_500_000, 3_000_000):          # retry bigger if the write finished before the kill
        pidfile = tmp_path / f"kernel-{rows}.pid"
        proc = subprocess.Popen([sys.executable, "-c", cli, "run", "--profile", "smoke", "--dir", str(experiments.dir),
                                 "-p", f"rows={rows}", "-p", f"pidfile={pidfile}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
        landed, deadline = False, time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if pidfile.exists() and pidfile.read_text() and list(out.glob(".staging/*/.big.csv.*.tmp")):   # staged write
                os.kill(int(pidfile.read_text()), signal.SIGKILL)    # the kernel, busy writing the CSV
                landed = True
                break
            time.sleep(0.005)
        log = proc.communicate(timeout=120)[0].decode()
        if landed: break
        before = first_run()                                     # write completed: restore and retry
    assert landed, "could not kill the kernel during the write"
    assert proc.returncode == 1 and "failed" in log, log
    after = (out / "big.csv").read_bytes(), (out / "MANIFEST.json").read_bytes()
    assert after == before
    man = json.loads(after[1])
    assert man["outputs"]["big"]["files"][0]["sha256"] == sha256_file(out / "big.csv")
    assert pd.read_csv(out / "big.csv").shape == (10, 8)
    assert "- `killme` · " in (out / "FAILED_RUNS.md").read_text() and not list(out.glob(".staging/*"))
