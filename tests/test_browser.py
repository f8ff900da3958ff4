"""The explorers in a real browser: headless JupyterLab, Debian's chromium driven by selenium (helpers: labbrowser.py).

Each explorer notebook of `nbs/explorers/` is copied into a temporary root (JupyterLab never writes the repository's
notebooks), opened, run with Run All Cells; then a text is typed into `.tl-text`, sliders and menus are moved, and the
test waits until the rendered widget in the DOM (`.tl-status`, `.tl-view`, `.tl-message`) answers. A PNG of each
explorer lands in `.test-output/browser/<notebook>.png` (git-ignored; the README shows them).

`make test` installs `chromium` and `chromium-driver` from Debian when they are missing; without them this test fails
(it is not skipped). One JupyterLab serves the module in each pytest-xdist worker that runs one of these tests (they
are not pinned to one worker: `--dist loadgroup` does not group under pytest 9.2, pytest-dev/pytest-xdist#1386, and a
second server costs about 2 s); each test gets a fresh chromium, a fresh kernel and a whole-test timeout."""
from __future__ import annotations
import re, shutil, signal, time
from pathlib import Path
import pytest
from tokenlab.lab.core import repo_root
from labbrowser import Browser, BrowserTestError, Deadline, Lab, Page, processes_naming

ROOT = repo_root(Path(__file__).parent)
EXPLORERS = ROOT / "nbs" / "explorers"
SHOTS = ROOT / ".test-output" / "browser"
REQUIRED = ("token_inspector", "attention_explorer")          # issue 14: these two must exist and pass
WHOLE_TEST_S = {"token_inspector": 150, "attention_explorer": 150, "pruning_viewer": 300, "steering_playground": 300}
STEP_S = 30              # one control's answer (the explorers answer in well under a second; this is a hang guard)


# --- what each explorer is put through -------------------------------------------------------------------------------
def counts(status: str) -> dict[str, int]:
    "Token inspector status 'gpt2 12 tokens, llama3 10 tokens' -> {'gpt2': 12, 'llama3': 10}."
    return {m[1]: int(m[2]) for m in re.finditer(r"(\S+) (\d+) tokens", status)}


def layer_head(status: str) -> tuple[int, int] | None:
    m = re.search(r"layer (\d+), head (\d+)", status)
    return (int(m[1]), int(m[2])) if m else None


def no_message(p: Page, root) -> bool:
    return p.text(root, "tl-message") == ""


def drive_token_inspector(p: Page, root):
    before = p.text(root, "tl-status")
    assert counts(before), f"token inspector status names no token counts: {before!r}"
    text = "The quick brown fox jumps over the lazy dog. Ελληνικά 日本語"
    p.type_text(root, text)
    def typed():
        st, view = p.text(root, "tl-status"), p.text(root, "tl-view")
        return st != before and counts(st) and "fox" in view and no_message(p, root) and st
    st = p.wait("the token view to show the typed text", typed, STEP_S)
    for name, n in counts(st).items():          # every tokenizer row holds as many token spans as its status says
        spans = root.find_elements("css selector", f'.tl-view .tl-row[data-tokenizer="{name}"] .tl-token')
        assert len(spans) == n, f"{name}: status says {n} tokens, the view shows {len(spans)} .tl-token spans"
        assert all(s.get_attribute("data-id").isdigit() for s in spans), f"{name}: a token span without a numeric data-id"
    # bad input shows a message in the widget and raises nothing into the notebook
    p.type_text(root, "")
    msg = p.wait("a message for the empty text", lambda: p.text(root, "tl-message"), STEP_S)
    assert "empty" in msg.lower(), msg
    assert not p.state().get("errors"), p.report()
    p.type_text(root, text)
    p.wait("the message to clear after a good text", lambda: no_message(p, root) and p.text(root, "tl-status") == st, STEP_S)
    # the tokenizer list: choose two of them; the view then holds exactly those rows
    names = p.options(root, "tl-tokenizers")
    pick = [n for n in ("gpt2", "o200k_base") if n in names] or names[:2]
    p.select(root, "tl-tokenizers", labels=pick)
    def rows():
        shown = [r.get_attribute("data-tokenizer") for r in root.find_elements("css selector", ".tl-view .tl-row")]
        return shown == pick and list(counts(p.text(root, "tl-status"))) == pick and no_message(p, root)
    p.wait(f"the view to show the tokenizers {pick}", rows, STEP_S)
    # back to the default set, then a UDHR article from the loader: the premium against English appears
    p.select(root, "tl-tokenizers", labels=list(counts(st)))
    p.wait("the default tokenizers again", lambda: p.text(root, "tl-status") == st, STEP_S)
    langs = p.options(root, "tl-language")
    lang = next((o for o in langs if o.endswith("(jpn)")), langs[1])
    p.select(root, "tl-language", labels=[lang])
    def article():
        view, status = p.text(root, "tl-view"), p.text(root, "tl-status")
        return (status != st and "premium" in view and root.find_elements("css selector", ".tl-view .tl-parallel")
                and no_message(p, root) and p.text(root, "tl-text") != text)
    p.wait(f"the view to show UDHR article 1 in {lang} with its premium", article, STEP_S)


def drive_attention_explorer(p: Page, root):
    st0 = p.text(root, "tl-status")
    lh = layer_head(st0)
    assert lh, f"attention explorer status has no 'layer L, head H': {st0!r}"
    L, H = lh
    view0 = p.fingerprint(root, "tl-view")
    # the layer slider, one step with the keyboard
    lmax = int(p.slider_range(root, "tl-layer")[2])
    dl = 1 if L < lmax else -1
    p.move_slider(root, "tl-layer", dl)
    p.wait(f"status 'layer {L + dl}, head {H}'", lambda: layer_head(p.text(root, "tl-status")) == (L + dl, H), STEP_S)
    assert p.slider_value(root, "tl-layer") == str(L + dl)
    view1 = p.wait("the view to redraw for the new layer", lambda: (f := p.fingerprint(root, "tl-view")) != view0 and f, STEP_S)
    # the head slider, two steps
    hmax = int(p.slider_range(root, "tl-head")[2])
    dh = 2 if H + 2 <= hmax else -2
    p.move_slider(root, "tl-head", dh)
    p.wait(f"status 'layer {L + dl}, head {H + dh}'", lambda: layer_head(p.text(root, "tl-status")) == (L + dl, H + dh), STEP_S)
    p.wait("the view to redraw for the new head", lambda: p.fingerprint(root, "tl-view") != view1, STEP_S)
    assert no_message(p, root), p.report()
    # a new text runs the model once: the token count in the status and the token strip follow it
    text = "Paris is the capital of France. The river Seine flows through Paris."
    p.type_text(root, text)
    def new_text():
        st = p.text(root, "tl-status")
        return (layer_head(st) == (L + dl, H + dh) and "Seine" in p.text(root, "tl-view") and st != st0
                and "running" not in st and no_message(p, root) and st)
    p.wait("the explorer to show the new text", new_text, STEP_S + 30)
    # bad input: a message, no exception in the notebook, the last good view kept
    good = p.fingerprint(root, "tl-view")
    p.type_text(root, "   ")
    msg = p.wait("a message for the empty text", lambda: p.text(root, "tl-message"), STEP_S)
    assert "empty" in msg.lower(), msg
    assert p.fingerprint(root, "tl-view") == good and not p.state().get("errors"), p.report()
    p.type_text(root, text)
    p.wait("the message to clear", lambda: no_message(p, root), STEP_S)


def drive_by_contract(p: Page, root):
    """Pruning viewer / steering playground (issue 14's contract): each of tl-method, tl-ratio, tl-strength present is
    moved and the explorer must answer (status or view changes, no '…' of a running computation left, no message);
    then every control goes back and the view must be the opening one again (results are cached), for the screenshot."""
    view0, undo = p.html(root, "tl-view"), []
    def settled(before):
        return lambda: p.fingerprint(root, "tl-status", "tl-view") != before and "…" not in p.text(root, "tl-status")
    for cls, how in (("tl-method", "select"), ("tl-ratio", "slide"), ("tl-strength", "slide")):
        if not root.find_elements("css selector", f".{cls}"): continue
        before = p.fingerprint(root, "tl-status", "tl-view")
        if how == "select":
            opts, cur = p.options(root, cls), p.part(root, cls).find_element("css selector", "select").get_attribute("value")
            i0 = opts.index(cur) if cur in opts else 0
            p.select(root, cls, index=(i0 + 1) % len(opts))
            undo.append(lambda cls=cls, i0=i0: p.select(root, cls, index=i0))
        else:
            lo, v, hi = p.slider_range(root, cls)
            if lo == hi: continue                             # a one-value slider (e.g. a method without strengths)
            step = 1 if v < hi else -1
            p.move_slider(root, cls, step)
            undo.append(lambda cls=cls, step=step: p.move_slider(root, cls, -step))
        p.wait(f"the explorer to answer the moved .{cls}", settled(before), STEP_S + 60)
        assert no_message(p, root), p.report()
    assert undo, "none of tl-method, tl-ratio, tl-strength could be moved in the explorer"
    for back in reversed(undo):
        before = p.fingerprint(root, "tl-status", "tl-view")
        back()
        p.wait("the explorer to answer a control moved back", settled(before), STEP_S + 60)
    p.wait("the opening view again after every control went back",
           lambda: p.html(root, "tl-view") == view0 and "…" not in p.text(root, "tl-status"), STEP_S + 60)
    assert no_message(p, root), p.report()


DRIVERS = {"token_inspector": ("token-inspector", drive_token_inspector),
           "attention_explorer": ("attention-explorer", drive_attention_explorer),
           "pruning_viewer": ("pruning-viewer", drive_by_contract),
           "steering_playground": ("steering-playground", drive_by_contract)}


def notebooks() -> list[str]:
    "The required explorers and every other notebook in nbs/explorers/ (a new one without a driver fails below)."
    found = sorted(f.stem for f in EXPLORERS.glob("*.ipynb")) if EXPLORERS.is_dir() else []
    return list(REQUIRED) + [n for n in found if n not in REQUIRED]


# --- fixtures: one JupyterLab for the module, a chromium and a whole-test timeout per test -----------------------------
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "root"
    (root / "nbs").mkdir(parents=True)
    if EXPLORERS.is_dir():                              # a copy: the lab may save or checkpoint, the repo stays clean
        shutil.copytree(EXPLORERS, root / "nbs" / "explorers", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = {"TOKENLAB_ROOT": str(ROOT), "TOKENLAB_RUNS": str(tmp / "runs"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    lab = Lab(root, tmp / "lab", env=env, unset=("TOKENLAB_FIGURES", "TOKENLAB_PROFILE"))
    try:
        yield lab.start()
    finally:
        killed = lab.stop()
        if killed: print(f"browser test: killed {len(killed)} processes that outlived the JupyterLab shutdown: {killed}")
        left = processes_naming(str(tmp))
        assert not left, f"processes of the browser test still run after its teardown: {left}"


class WholeTestTimeout(BrowserTestError):
    pass


@pytest.fixture
def deadline(request):
    "A budget for the whole test: waits stop at it, and SIGALRM interrupts anything else 10 s later."
    seconds = WHOLE_TEST_S.get(request.node.callspec.params.get("name"), 150)
    d = Deadline(seconds)
    def alarm(*_): raise WholeTestTimeout(f"whole-test timeout: {seconds + 10} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds + 10)
    try: yield d
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def page(lab, deadline, tmp_path):
    b = Browser(tmp_path / "chromium")
    try:
        b.start()
        yield Page(b, lab, deadline)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)          # the whole-test alarm must not cut the teardown short
        killed = b.stop()
        lab.shutdown_kernels()
        if killed: print(f"browser test: killed {len(killed)} chromium processes that outlived driver.quit(): {killed}")
        left = processes_naming(str(tmp_path / "chromium"))
        assert not left, f"chromium processes still run after the test's teardown: {left}"


@pytest.mark.parametrize("name", notebooks())
def test_explorer_in_a_real_browser(name, page, record_property):
    path = EXPLORERS / f"{name}.ipynb"
    assert path.exists(), f"{path.relative_to(ROOT)} is missing (issue 14 requires it)"
    assert name in DRIVERS, f"nbs/explorers/{name}.ipynb has no driver in tests/test_browser.py: add one"
    kind, drive = DRIVERS[name]
    t0 = time.monotonic()
    page.open(f"nbs/explorers/{name}.ipynb")
    t_open = time.monotonic() - t0
    t_run = page.run_all(timeout=page.deadline.left())
    root = page.explorer(kind)
    page.wait("the explorer to render its view", lambda: page.text(root, "tl-view") and page.text(root, "tl-status"), STEP_S)
    assert no_message(page, root), f"the explorer opens with a message\n{page.report()}"
    drive(page, root)
    shot = page.screenshot(root, SHOTS / f"{name}.png")
    record_property("browser", f"{name}: opened in {t_open:.1f} s, ran all cells in {t_run:.1f} s, "
                               f"whole test {time.monotonic() - t0:.1f} s; screenshot {shot}")   # listed by conftest.py
