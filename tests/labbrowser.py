"""A headless JupyterLab driven by Debian's chromium through selenium, for `tests/test_browser.py`.

`Lab(root, tmp)` starts `jupyter lab` on 127.0.0.1 (a free port, a random token, `--no-browser`, `root` as its
root folder) with fresh JUPYTER config/data/runtime, JupyterLab settings/workspaces and IPython folders under `tmp`,
so that nothing of the user's set-up is read; news, update checks and the extension manager's PyPI look-ups are off.
`Browser(tmp)` starts `/usr/bin/chromium` headless through `/usr/bin/chromedriver` (never selenium-manager) with an
empty profile and every background connection off. `Page(browser, lab)` opens notebooks, runs all their cells and
drives ipywidgets controls by the CSS classes the explorers put on them.

Teardown is unconditional: both classes are context managers whose exit stops the process and its process group,
then kills whatever process still names the test's temporary folder on its command line (kernels are started by
jupyter in sessions of their own; chromium's helpers carry the profile folder)."""
from __future__ import annotations
import hashlib, json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

CHROMIUM = Path(os.environ.get("TOKENLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TOKENLAB_CHROMEDRIVER", "/usr/bin/chromedriver"))
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BrowserTestError(AssertionError):
    "A failed wait or check; its message carries what the page showed."


class Deadline:
    "A whole-test time budget: `left()` seconds remain; `check(what)` raises once it is spent."
    def __init__(self, seconds: float): self.end, self.seconds = time.monotonic() + seconds, seconds
    def left(self) -> float: return self.end - time.monotonic()
    def check(self, what: str):
        if self.left() <= 0: raise BrowserTestError(f"whole-test timeout ({self.seconds:.0f} s) spent while {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    "SIGTERM `proc`'s process group (it was started with a session of its own), SIGKILL after `grace` seconds."
    if proc is None: return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try: os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError): pass
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired: continue
    try: os.killpg(proc.pid, signal.SIGKILL)      # the leader may be gone while members of its group live on
    except (ProcessLookupError, PermissionError): pass


def processes_naming(marker: str) -> list[int]:
    "Pids of this user's processes whose command line contains `marker` (a unique temporary path), not ourselves."
    me, pids = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me: continue
        try:
            if d.stat().st_uid != os.getuid(): continue
            if marker in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"): pids.append(int(d.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError): continue
    return pids


def kill_naming(marker: str, wait: float = 5.0) -> list[int]:
    "SIGKILL every process that still names `marker` and wait for them to go; returns their pids (empty: clean teardown)."
    pids = processes_naming(marker)
    for pid in pids:
        try: os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError): pass
    end = time.monotonic() + wait
    while pids and processes_naming(marker) and time.monotonic() < end: time.sleep(0.1)
    return pids


class Lab:
    "A JupyterLab server for the test (see the module docstring); `url(path)` opens `path` under `root`."

    def __init__(self, root: Path, tmp: Path, env: dict | None = None, unset=(), timeout: float = 60):
        self.root, self.tmp, self.timeout, self.unset = Path(root), Path(tmp), timeout, tuple(unset)
        self.port, self.token = free_port(), secrets.token_hex(24)
        self.log_path = self.tmp / "jupyter.log"
        self.extra_env, self.proc = env or {}, None

    def _env(self) -> dict:
        d = {k: self.tmp / k for k in ("config", "data", "runtime", "lab-settings", "lab-workspaces", "ipython", "mpl")}
        for p in d.values(): p.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_")) and k not in self.unset}
        env.update(JUPYTER_CONFIG_DIR=str(d["config"]), JUPYTER_DATA_DIR=str(d["data"]),
                   JUPYTER_RUNTIME_DIR=str(d["runtime"]), JUPYTERLAB_SETTINGS_DIR=str(d["lab-settings"]),
                   JUPYTERLAB_WORKSPACES_DIR=str(d["lab-workspaces"]), IPYTHONDIR=str(d["ipython"]),
                   MPLCONFIGDIR=str(d["mpl"]), JUPYTER_PLATFORM_DIRS="0", PYTHONUNBUFFERED="1")
        env.update({k: str(v) for k, v in self.extra_env.items()})
        config = {
            "ServerApp": {"ip": "127.0.0.1", "port": self.port, "port_retries": 0, "open_browser": False,
                          "root_dir": str(self.root), "terminals_enabled": False,
                          "jpserver_extensions": {"jupyter_lsp": False}, "allow_root": os.geteuid() == 0},
            "IdentityProvider": {"token": self.token},
            "LabApp": {"news_url": None, "extension_manager": "readonly", "expose_app_in_browser": True,
                       "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"},
        }
        (d["config"] / "jupyter_server_config.json").write_text(json.dumps(config, indent=1))
        settings = {   # user settings: no news/update toasts, no autosave, every cell rendered (no windowing)
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
            "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
            "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        }
        for name, value in settings.items():
            f = d["lab-settings"] / f"{name}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(value))
        return env

    def start(self) -> "Lab":
        env = self._env()
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise BrowserTestError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.api("GET", "/api/status", timeout=2) is not None: return self
            except OSError: pass
            if time.monotonic() > end:
                raise BrowserTestError(f"jupyter lab did not answer in {self.timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def api(self, method: str, path: str, timeout: float = 5):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else {}

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{path}?reset&token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        try: return self.log_path.read_text(errors="replace")[-n:]
        except OSError: return "(no jupyter log)"

    def shutdown_kernels(self) -> None:
        "Shut every kernel of this server down (between tests: a kernel holding a model is hundreds of MB)."
        if self.proc is None or self.proc.poll() is not None: return
        try:
            for k in self.api("GET", "/api/kernels", timeout=5): self.api("DELETE", f"/api/kernels/{k['id']}", timeout=15)
        except (OSError, ValueError): pass

    def stop(self) -> list[int]:
        "Shut kernels and server down (REST, then signals), then kill what still names our folder; returns those pids."
        if self.proc is not None and self.proc.poll() is None:
            self.shutdown_kernels()
            kill_group(self.proc)
        if getattr(self, "_log", None): self._log.close()
        return kill_naming(str(self.tmp))

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()


class Browser:
    "Headless Debian chromium via `/usr/bin/chromedriver`, new empty profile, no background networking."

    def __init__(self, tmp: Path, size=(1400, 1000)):
        self.tmp, self.size, self.driver, self.service = Path(tmp), size, None, None

    def flags(self) -> list[str]:
        f = ["--headless=new", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
             "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",     # nothing but the lab is reachable
             f"--window-size={self.size[0]},{self.size[1]}", f"--user-data-dir={self.tmp / 'chromium-profile'}"]
        if os.geteuid() == 0: f.append("--no-sandbox")                  # chromium refuses to sandbox as root
        return f

    def start(self) -> "Browser":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        for p in (CHROMIUM, CHROMEDRIVER):
            if not p.exists():
                raise BrowserTestError(f"{p} is missing: `make test` installs Debian's chromium and chromium-driver "
                                       "(apt-get install chromium chromium-driver)")
        (self.tmp / "chromium-profile").mkdir(parents=True, exist_ok=True)
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for flag in self.flags(): opts.add_argument(flag)
        self.service = Service(str(CHROMEDRIVER), log_output=str(self.tmp / "chromedriver.log"),
                               env={**os.environ, "SE_OFFLINE": "true"}, popen_kw={"start_new_session": True})
        self.driver = webdriver.Chrome(service=self.service, options=opts)
        self.driver.set_script_timeout(20)
        return self

    def stop(self) -> list[int]:
        try:
            if self.driver is not None:
                try: self.driver.command_executor._client_config.timeout = 5    # quit waits for a hung command otherwise
                except AttributeError: pass
                self.driver.quit()
        except Exception: pass
        finally:
            if self.service is not None: kill_group(self.service.process, grace=3)
        return kill_naming(str(self.tmp / "chromium-profile"))

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()


# --- JavaScript run in the page (JupyterLab is started with expose_app_in_browser, so window.jupyterapp exists) ---
JS_STATE = """
const path = arguments[0], app = window.jupyterapp; if (!app || !app.shell) return {app: false};
const w = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
if (!w || !w.content || !w.sessionContext) return {app: true, notebook: false};
const cur = app.shell.currentWidget;
const ctx = w.sessionContext, cells = w.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
for (const c of cells) for (const o of c.model.outputs.toJSON())
  if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).slice(-3).join('\\n'));
return {app: true, notebook: true, id: w.id, current: !!cur && cur.id === w.id, ready: w.context.isReady && ctx.isReady,
        kernel: ctx.kernelDisplayStatus, kernelName: ctx.kernelDisplayName,
        cells: cells.length, cells_with_code: cells.filter(c => c.model.sharedModel.getSource().trim()).length,
        pending: cells.filter(c => c.model.sharedModel.getSource().trim() &&
                                   (c.model.executionCount === null || c.promptNode.textContent.includes('*'))).length,
        errors: errors};
"""


class Page:
    "One chromium tab on the lab: open a notebook, run all cells, read and drive the explorer widgets."

    def __init__(self, browser: Browser, lab: Lab, deadline: Deadline):
        self.b, self.d, self.lab, self.deadline = browser, browser.driver, lab, deadline
        self.path = None                      # the notebook this page works on (set by `open`)

    # -- waits ----------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        try: return self.d.execute_script(JS_STATE, self.path) or {}
        except Exception as e: return {"script_error": str(e).splitlines()[0]}

    def report(self) -> str:
        "What the page shows now, for failure messages: notebook state, error outputs, widget messages, server log."
        st = self.state()
        errs = st.pop("errors", []) if isinstance(st, dict) else []
        try:
            msgs = [e.text for e in self.d.find_elements("css selector", ".tl-message") if e.text.strip()]
            stderr = [e.text[-800:] for e in self.d.find_elements(
                "css selector", '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
            dialogs = [e.text for e in self.d.find_elements("css selector", ".jp-Dialog")]
        except Exception as e:
            msgs, stderr, dialogs = [f"(page unreadable: {e})"], [], []
        lines = [f"notebook state: {st}"]
        lines += [f"error output: {ANSI.sub('', e)[-1500:]}" for e in errs]
        lines += [f"stderr output: {s}" for s in stderr[-3:]] + [f"tl-message: {m}" for m in msgs]
        lines += [f"dialog: {d}" for d in dialogs]
        lines.append("jupyter log tail:\n" + self.lab.log_tail(1500))
        return "\n".join(lines)

    def wait(self, what: str, cond, timeout: float, poll: float = 0.2):
        "Poll `cond()` until it returns something truthy, or fail with `what` and the page's report."
        end = min(time.monotonic() + timeout, self.deadline.end)
        last_exc = None
        while True:
            try:
                v = cond()
                if v: return v
            except BrowserTestError: raise
            except Exception as e: last_exc = e
            if time.monotonic() > end:
                why = "whole-test timeout" if self.deadline.left() <= 0 else f"{timeout:.0f} s"
                extra = f"\nlast exception: {type(last_exc).__name__}: {str(last_exc).splitlines()[0] if str(last_exc) else ''}" if last_exc else ""
                raise BrowserTestError(f"timed out ({why}) waiting for {what}{extra}\n{self.report()}")
            time.sleep(poll)

    # -- notebook -----------------------------------------------------------------------------------------------------
    def open(self, path: str, timeout: float = 90):
        "Open `path` (relative to the lab's root), focus it with a click and wait for its kernel to be idle."
        self.path = path
        self.d.get(self.lab.url(path))
        def ready():
            st = self.state()
            if st.get("notebook") and not st.get("current"):   # a headless window has no focus until clicked
                prompts = self.d.find_elements("css selector", f"#{st['id']} .jp-Cell .jp-InputPrompt")
                if prompts: prompts[0].click()
            return st.get("ready") and st.get("current") and st.get("kernel") == "idle"
        self.wait(f"{path} to open as the current widget with an idle kernel", ready, timeout)

    def run_all(self, timeout: float = 120) -> float:
        """Clear the saved outputs, then Run > Run All Cells (the JupyterLab commands); wait until every code cell ran
        in this kernel; fail on the first error output."""
        t0 = time.monotonic()
        if not self.state().get("current"): raise BrowserTestError(f"{self.path} is not the current widget\n{self.report()}")
        self.d.execute_script("return window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs');")
        st = self.state()
        if st.get("pending") != st.get("cells_with_code"):     # a kept output or count would pass for this run's
            raise BrowserTestError(f"outputs of {self.path} are still there after Clear All Outputs\n{self.report()}")
        self.d.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;")
        def done():
            st = self.state()
            if st.get("errors"):
                raise BrowserTestError(f"a cell raised while running all cells\n{self.report()}")
            if st.get("kernel") in ("dead", "unknown") :
                raise BrowserTestError(f"the kernel is {st.get('kernel')}\n{self.report()}")
            return st.get("notebook") and st.get("pending") == 0 and st.get("kernel") == "idle"
        time.sleep(0.5)                       # let the run start before the first look (the kernel is idle before it)
        self.wait("every cell to run (Run All Cells)", done, timeout)
        return time.monotonic() - t0

    # -- widgets --------------------------------------------------------------------------------------------------
    def explorer(self, kind: str, timeout: float = 60):
        sel = f".tokenlab-explorer.tokenlab-{kind}"
        return self.wait(f"the rendered widget {sel}", lambda: next(iter(self.d.find_elements("css selector", sel)), None),
                         timeout)

    def part(self, root, cls: str):
        found = root.find_elements("css selector", f".{cls}")
        if not found: raise BrowserTestError(f"no .{cls} inside the explorer\n{self.report()}")
        return found[0]

    def html(self, root, cls: str) -> str:
        return self.part(root, cls).get_attribute("innerHTML") or ""

    def text(self, root, cls: str) -> str:
        "The text of `.cls` (a textarea's or input's value, otherwise the element's textContent)."
        el = self.part(root, cls)
        box = el.find_elements("css selector", "textarea, input")
        return (box[0].get_attribute("value") if box else el.get_attribute("textContent")).strip()

    def fingerprint(self, root, *classes: str) -> str:
        return hashlib.sha1("\0".join(self.html(root, c) for c in classes).encode()).hexdigest()

    def type_text(self, root, value: str, cls: str = "tl-text"):
        "Replace the text of the textarea (or input) in `.cls`, then TAB out of it so that the widget commits."
        from selenium.webdriver.common.keys import Keys
        box = self.part(root, cls).find_element("css selector", "textarea, input")
        box.click()
        box.send_keys(Keys.CONTROL, "a"); box.send_keys(Keys.DELETE)
        if value: box.send_keys(value)
        box.send_keys(Keys.TAB)

    def slider_value(self, root, cls: str) -> str:
        return self.part(root, cls).find_element("css selector", ".widget-readout").text.strip()

    def slider_range(self, root, cls: str) -> tuple[float, float, float]:
        "(min, value, max) of the slider in `.cls`, read off its handle's ARIA attributes (indices for a SelectionSlider)."
        h = self.part(root, cls).find_element("css selector", ".noUi-handle")
        return tuple(float(h.get_attribute(f"aria-value{a}")) for a in ("min", "now", "max"))

    def slider_at_min(self, root, cls: str) -> bool:
        lo, v, _ = self.slider_range(root, cls)
        return v <= lo

    def move_slider(self, root, cls: str, steps: int = 1):
        "Move the slider in `.cls` by `steps` with the keyboard on its handle (noUiSlider), as a user would."
        from selenium.webdriver.common.keys import Keys
        handle = self.part(root, cls).find_element("css selector", ".noUi-handle")
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
        handle.click()
        key = Keys.ARROW_RIGHT if steps > 0 else Keys.ARROW_LEFT
        for _ in range(abs(steps)): handle.send_keys(key)

    def select(self, root, cls: str, index: int | None = None, labels: list[str] | None = None):
        "Choose option `index` of the <select> in `.cls` (Dropdown), or the options `labels` (SelectMultiple: only those)."
        from selenium.webdriver.support.select import Select
        el = self.part(root, cls).find_element("css selector", "select")
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
        s = Select(el)
        if index is not None: return s.select_by_index(index)
        opts = {o.text: o for o in s.options}
        missing = [l for l in labels if l not in opts]
        if missing: raise BrowserTestError(f".{cls} has no option {missing}; it has {list(opts)}")
        if s.is_multiple: s.deselect_all()
        for l in labels: s.select_by_visible_text(l)

    def options(self, root, cls: str) -> list[str]:
        return [o.text for o in self.part(root, cls).find_elements("css selector", "select option")]

    def screenshot(self, root, path: Path) -> Path:
        "A PNG of the explorer's root widget (the window grows to hold it), written to `path`."
        path.parent.mkdir(parents=True, exist_ok=True)
        self.d.execute_script("arguments[0].scrollIntoView({block: 'start'});", root)
        h = int(self.d.execute_script("return arguments[0].getBoundingClientRect().height;", root) or 0)
        if h + 200 > self.b.size[1]: self.d.set_window_size(self.b.size[0], min(h + 300, 6000))
        self.d.execute_script("arguments[0].scrollIntoView({block: 'start'});", root)
        time.sleep(0.3)
        tmp = path.with_name(f".{path.stem}.tmp.png")
        if not root.screenshot(str(tmp)): raise BrowserTestError(f"chromium took no screenshot for {path}")
        os.replace(tmp, path)
        self.d.set_window_size(*self.b.size)
        return path
