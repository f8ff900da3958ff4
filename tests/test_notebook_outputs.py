"""Notebooks that show their results: the scrubber (tokenlab.lab.notebooks), the committed outputs of the library
notebooks and of the cpu profile's executed experiment notebooks (figures/cpu/notebooks/)."""
from __future__ import annotations
import ast, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path
import nbformat, pytest
from hypothesis import given, settings, strategies as st
from tokenlab.lab import notebooks as nbs
from tokenlab.lab.core import TokenlabError, repo_root, sha256_file

ROOT = repo_root(Path(__file__).parent)
BIN = Path(sys.executable).parent
P = [("/home/me/lab/figures", "<figures>"), ("/home/me/lab", "<repo>"), ("/tmp", "<tmp>"), ("/home/me", "~")]


def stream(text, name="stderr"): return {"output_type": "stream", "name": name, "text": text}


def executed(*cells, meta=None) -> dict:
    "A hand-made executed notebook: `cells` are (source, outputs, tags)."
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"},
                                            **(meta or {})})
    nb.cells = [nbformat.v4.new_code_cell(s, id=f"c{i}", outputs=o, metadata={"tags": t} if t else {})
                for i, (s, o, t) in enumerate(cells)]
    return json.loads(json.dumps(nb))


# --- the scrubber, one volatile kind at a time ---------------------------------------------------------------------

def only_outputs(nb) -> list: return [o for c in nbs.scrub_notebook(nb, P)["cells"] for o in c.get("outputs", [])]


def test_progress_bars_and_carriage_returns_removed_printed_lines_kept():
    out = only_outputs(executed(("train()", [stream("\r"), stream("\rsteps:  50%|#    | 1/2 [00:01<00:01,  1.2it/s]"),
                                             stream("\rsteps: 100%|#####| 2/2 [00:02<00:00,  1.1it/s]"),
                                             stream("loss 0.25\n", "stdout"), stream("\n"), stream("12it [00:03, 3.9it/s]\n", "stdout")], None)))
    assert out == [stream(["loss 0.25\n"], "stdout")]


def test_memory_addresses_paths_run_ids_and_kernel_files_made_stable():
    text = ("<tokenlab.X object at 0x7f3a9c2b1d90> /home/me/lab/figures/cpu/.staging/20261205T162937Z-f8763d/a.png "
            "/home/me/lab/nbs /home/me/.cache /tmp/ipykernel_4242/123.py:3: UserWarning run 20261205T162937Z-f8763d "
            "2026-12-05T16:29:38.134050+00:00\n")
    out = only_outputs(executed(("x", [stream(text, "stdout"), nbformat.v4.new_output("execute_result", {"text/plain": text}, execution_count=1)], None)))
    want = ("<tokenlab.X object> <figures>/cpu/a.png <repo>/nbs ~/.cache <tmp>/ipykernel_<pid>/123.py:3: UserWarning run <run-id> "
            "<time>\n")
    assert out[0]["text"] == [want] and out[1]["data"]["text/plain"] == [want]


def test_execution_metadata_removed_tags_kept_injected_cell_renamed():
    nb = executed(("n = 1", [], ["parameters"]), ("n = 2", [], ["injected-parameters"]),
                  meta={"papermill": {"duration": 1.5, "input_path": "/home/me/lab/x.ipynb"}, "widgets": {"state": {}}})
    for c in nb["cells"]: c["metadata"].update(execution={"iopub.status.idle": "2026-12-05T16:29:38Z"}, papermill={"duration": 0.1})
    out = nbs.scrub_notebook(nb, P)
    assert set(out["metadata"]) == {"kernelspec"}
    assert [c["metadata"] for c in out["cells"]] == [{"tags": ["parameters"]}, {"tags": ["injected-parameters"]}]
    assert [c["id"] for c in out["cells"]] == ["c0", "injected-parameters"]


def test_volatile_cell_becomes_one_note_naming_where_the_numbers_are():
    src = 'LAT = time_it()\nresults.save_table(LAT, "pruning_vlm_latency", "Measured latency")\ndisplay(LAT)'
    out = nbs.scrub_notebook(executed((src, [stream("12.5 ms\n", "stdout")], ["volatile"]), ("print(1)", [], ["volatile"])), P)
    assert out["cells"][0]["outputs"] == [stream([nbs.volatile_note(src)], "stdout")]
    assert "table `pruning_vlm_latency`" in nbs.volatile_note(src) and out["cells"][1]["outputs"] == []


def test_stable_content_kept_byte_for_byte():
    png = {"image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==\n",
           "text/plain": ["<Figure size 640x480 with 1 Axes>"]}
    html = {"text/html": ["<table>\n", "<tr><td>0.818</td></tr>\n", "</table>"], "text/plain": ["   recall\n", "0   0.818"]}
    err = {"output_type": "error", "ename": "TokenlabError", "evalue": "unknown tokenizer 'x'", "traceback": ["TokenlabError: unknown tokenizer 'x'"]}
    outs = [stream(["recall 0.818 [0.70, 0.91]\n", "byte at 0x80\n"], "stdout"),
            {"output_type": "display_data", "data": png, "metadata": {}},
            {"output_type": "execute_result", "data": html, "metadata": {}, "execution_count": 3}, err]
    nb = executed(("show()", outs, None))
    assert nbs.scrub_notebook(nb, P)["cells"][0]["outputs"] == outs


def test_widgets_lose_their_view_tqdm_widgets_vanish():
    view = "application/vnd.jupyter.widget-view+json"
    bar = {"output_type": "display_data", "metadata": {}, "data": {view: {"model_id": "f00"}, "text/plain": ["x:   0%|   | 0/3 [00:00<?, ?it/s]"]}}
    box = {"output_type": "display_data", "metadata": {}, "data": {view: {"model_id": "ba5"}, "text/plain": ["VBox()"]}}
    assert only_outputs(executed(("w", [bar, box], None))) == [{"output_type": "display_data", "metadata": {}, "data": {"text/plain": ["VBox()"]}}]


LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)
BAR = st.builds(lambda d, n, k: f"{d}: {100 * k // n:3d}%|#   | {k}/{n} [00:0{k % 10}<00:01,  1.{k}it/s]",
                st.sampled_from(["steps", "x"]), st.integers(1, 50), st.integers(0, 50))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(LINE.map(lambda s: ("line", s)), BAR.map(lambda s: ("bar", s))), max_size=12), st.booleans())
def test_streams_property(items, stderr):
    "Any mix of printed lines and tqdm updates: bars gone, printed lines kept in order, and scrubbing is idempotent."
    text, open_bar = "", False
    for k, s in items:                                   # a bar redraws itself after \r; it is closed with \n before a print
        if k == "bar": text, open_bar = text + "\r" + s, True
        else: text, open_bar = text + ("\n" if open_bar else "") + s + "\n", False
    nb = executed(("f()", [stream(text, "stderr" if stderr else "stdout")], None))
    once = nbs.scrub_notebook(nb, [])
    assert nbs.scrub_notebook(once, []) == once
    got = "".join(o["text"] if isinstance(o["text"], str) else "".join(o["text"]) for o in once["cells"][0]["outputs"])
    assert not any(nbs.is_progress_bar(l) for l in got.split("\n"))
    lines = [s for k, s in items if k == "line" and not nbs.is_progress_bar(s)]
    shown = got.split("\n")
    kept = [l for l in lines if l.strip() or not stderr]
    assert all(nbs.scrub_text(l) in shown for l in kept if l.strip())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_scrub_text_is_idempotent_and_leaves_plain_text(text):
    once = nbs.scrub_text(text, P)
    assert nbs.scrub_text(once, P) == once
    if not re.search(r"[/\\]|0x|\d{4}", text): assert once == text


def test_write_scrubbed_is_atomic_and_refuses_a_huge_notebook(tmp_path, monkeypatch):
    src = tmp_path / "x.ipynb"
    nbformat.write(nbformat.from_dict(executed(("print(1)", [stream("1\n", "stdout")], None))), src)
    (tmp_path / "pub").mkdir(); (tmp_path / "pub" / "x.ipynb").write_text("old")
    monkeypatch.setenv("TOKENLAB_MAX_NOTEBOOK_MB", "0.0001")
    with pytest.raises(TokenlabError, match="MB after scrubbing, over the 0.0001 MB limit"): nbs.write_scrubbed(src, tmp_path / "pub" / "x.ipynb")
    assert (tmp_path / "pub" / "x.ipynb").read_text() == "old" and sorted(os.listdir(tmp_path / "pub")) == ["x.ipynb"]
    monkeypatch.delenv("TOKENLAB_MAX_NOTEBOOK_MB")
    info = nbs.write_scrubbed(src, tmp_path / "pub" / "x.ipynb")
    assert info["sha256"] == sha256_file(tmp_path / "pub" / "x.ipynb")


# --- the committed notebooks ---------------------------------------------------------------------------------------

LIBRARY = nbs.library_notebooks(root=ROOT)
CHEAP = ROOT / "nbs" / "vision" / "02_shapeworld.ipynb"          # a few seconds; a figure, tables and printed values
CPU_NOTEBOOKS = sorted((ROOT / "figures" / "cpu" / "notebooks").glob("*.ipynb"))
HERE = [p for p in {str(ROOT), str(Path(ROOT).resolve()), str(Path.home()), sys.prefix, os.path.realpath(sys.prefix), "/tmp/"}
        if len(p) > 1]
VOLATILE = [(re.compile(r" at 0x[0-9a-fA-F]{8,}"), "a memory address"), (re.compile(r"\bipykernel_\d+"), "a kernel's process id"),
            (re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{6}\b"), "a run id"), (re.compile(r"\.staging"), "a stage folder")]


def _texts(nb: dict):
    "(cell id, text) of every text output of `nb`."
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            parts = [o.get("text", "")] + [v for k, v in (o.get("data") or {}).items() if k.startswith("text/")] + o.get("traceback", [])
            for p in parts: yield c.get("id"), "".join(p) if isinstance(p, list) else str(p)


def _example_cells(nb: dict) -> list[dict]:
    "Code cells that are not exported and not skipped, whose last statement shows a value (a bare name, attribute, subscript) or that print."
    out = []
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] != "code" or re.search(r"^#\|\s*(export|exporti|slow|gpu|eval:\s*false|hide)\b", src, re.M): continue
        body = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
        try: tree = ast.parse(body)
        except SyntaxError: continue
        last = tree.body[-1] if tree.body else None
        shows = isinstance(last, ast.Expr) and isinstance(last.value, (ast.Name, ast.Attribute, ast.Subscript, ast.JoinedStr))
        prints = any(isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("print", "display") for n in ast.walk(tree))
        if shows or prints: out.append(c)
    return out


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT / "nbs")))
def test_library_notebook_keeps_the_outputs_of_its_examples(path):
    nb = json.loads(path.read_text())
    cells = _example_cells(nb)
    silent = [c["id"] for c in cells if not c.get("outputs")]
    assert not silent, f"{path.name}: example cells without outputs: {silent}; run `tokenlab notebooks --execute {path.relative_to(ROOT)}`"


@pytest.mark.parametrize("path", LIBRARY + CPU_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebook_has_no_volatile_output(path):
    nb = json.loads(path.read_text())
    assert "papermill" not in nb["metadata"] and all(set(c["metadata"]) <= {"tags"} for c in nb["cells"]), f"{path.name}: execution metadata"
    views = [c["id"] for c in nb["cells"] for o in c.get("outputs", []) if nbs.WIDGET_VIEW in (o.get("data") or {})]
    assert not views, f"{path.name}: a widget view (random model id) in cells {views}"
    for cid, t in _texts(nb):
        assert not any(nbs.is_progress_bar(l) for l in t.splitlines()), f"{path.name} cell {cid}: a progress bar"
        for pat, what in VOLATILE: assert not pat.search(t), f"{path.name} cell {cid}: {what}: {pat.search(t).group(0)!r}"
        for p in HERE: assert p not in t, f"{path.name} cell {cid}: a path of this machine: {p}"


def test_cpu_profile_publishes_every_experiment_notebook():
    "figures/cpu/: one executed notebook per experiment run, registered in the manifest and linked from the report."
    man = json.loads((ROOT / "figures" / "cpu" / "MANIFEST.json").read_text())
    report = (ROOT / "figures" / "cpu" / "REPORT.md").read_text()
    for name, run in man["runs"].items():
        nb = run.get("executed_notebook")
        assert nb, f"{name}: no executed notebook in figures/cpu (run `tokenlab run --profile cpu {name}`)"
        f = ROOT / "figures" / "cpu" / nb["path"]
        assert f.exists() and sha256_file(f) == nb["sha256"], f"{nb['path']} missing or not the one the manifest records"
        assert f"[`{name}`]({nb['path']})" in report
        assert f.stat().st_size <= nbs.max_notebook_bytes()


def test_nbdev_clean_keeps_the_outputs_and_changes_nothing(tmp_path):
    "nbdev_clean over a copy of nbs/ leaves every committed notebook byte for byte (outputs kept: clear_all is off)."
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs"); shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    before = {p: p.read_bytes() for p in (tmp_path / "nbs").rglob("*.ipynb")}
    probe = tmp_path / "nbs" / CHEAP.relative_to(ROOT / "nbs")                  # proof that nbdev_clean went over the copy
    nb = json.loads(probe.read_text()); nb["cells"][0]["metadata"]["scrolled"] = True; probe.write_text(json.dumps(nb))
    p = subprocess.run([str(BIN / "nbdev_clean")], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    changed = sorted(str(k.relative_to(tmp_path)) for k, v in before.items() if k.read_bytes() != v)
    assert not changed, f"nbdev_clean changes {changed}; run `make export` (or `tokenlab notebooks --execute`) and commit"
    assert any(c.get("outputs") for p in before for c in json.loads(p.read_text())["cells"]), "no notebook kept any output"



def test_a_library_notebook_reexecuted_gives_the_same_bytes():
    "One cheap library notebook executed again (in a copy of the checkout's nbs/): byte for byte what is committed."
    r = nbs.execute_notebook(CHEAP, check=True, root=ROOT)
    assert r["status"] == "unchanged", r["error"] or f"{CHEAP.name} changes when executed again: run `tokenlab notebooks --execute {CHEAP.relative_to(ROOT)}`"
