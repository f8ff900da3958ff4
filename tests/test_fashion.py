"""Fashion-MNIST (tokenlab.vision.fashion): the idx reader, the splits, class-balanced seeded subsets, RGB pictures for
DINOv2, and one-line refusals. Tests on a made-up asset always run; tests on the real files skip when the asset is not
fetched (`tokenlab fetch --name fashion-mnist`; `make test` fetches every tier)."""
from __future__ import annotations
import gzip, json, os, struct
from pathlib import Path
import numpy as np
import pytest
from tokenlab.lab.assets import CATALOGUE, MARKER, is_fetched
from tokenlab.lab.core import TokenlabError
from tokenlab.vision import fashion as f

REAL = is_fetched(f.ASSET)              # the real cache, read before any test changes TOKENLAB_DATA
needs_real = pytest.mark.skipif(not REAL, reason="asset 'fashion-mnist' not fetched; run: tokenlab fetch --name fashion-mnist")


def _replace(path: Path, data: bytes) -> None:
    "Replace a file as `tokenlab fetch` repairs one: a new file renamed over the old."
    tmp = path.with_name(path.name + ".tmp"); tmp.write_bytes(data); os.replace(tmp, path)


def _write_idx(path: Path, a: np.ndarray) -> None:
    raw = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + np.ascontiguousarray(a, np.uint8).tobytes()
    _replace(path, gzip.compress(raw))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    "A made-up asset of 50 + 30 images in an empty TOKENLAB_DATA: image i is filled with i, its label is i % 10."
    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    monkeypatch.setitem(f.SPLIT_SIZES, "train", 50); monkeypatch.setitem(f.SPLIT_SIZES, "test", 30)
    root = tmp_path / f.ASSET; d = root.joinpath(*f.FASHION_DIR); d.mkdir(parents=True)
    (root / MARKER).write_text(json.dumps({"sha256": CATALOGUE[f.ASSET].sha256}))
    for split, n in (("train", 50), ("test", 30)):
        img = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28))
        for fn, a in zip(f.SPLIT_FILES[split], (img, np.arange(n) % 10)): _write_idx(d / fn, a)
    return d


def _one_line(fn, *match):
    "`fn()` raises a TokenlabError of one line containing every string of `match`."
    with pytest.raises(TokenlabError) as e: fn()
    msg = str(e.value)
    assert "\n" not in msg and all(m in msg for m in match), msg
    return msg


# --- on a made-up asset ----------------------------------------------------------------------------------------------

def test_shapes_dtypes_and_slices(fake):
    x, y = f.fashion_mnist("train")
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((50, 28, 28), np.uint8, (50,), np.int64)
    x, y = f.fashion_mnist("test", n=4, start=26)
    assert x[:, 27, 27].tolist() == [26, 27, 28, 29] and y.tolist() == [6, 7, 8, 9]
    assert x.flags.writeable and x.flags.c_contiguous
    x[:] = 0
    assert f.fashion_mnist("test", n=1, start=26)[0][0, 0, 0] == 26          # the caller's copy, not the cache
    assert len(f.fashion_mnist("test", start=27)[0]) == 3                    # n=None: the rest of the split
    assert f.fashion_mnist("train", n=np.int32(3))[1].tolist() == [0, 1, 2]


@pytest.mark.parametrize("call, match", [
    (lambda: f.fashion_mnist("val"), "unknown split 'val'; valid splits: test, train"),
    (lambda: f.fashion_mnist("train", n=0), "n=0 is out of range for the train split from start=0 (50 images); allowed: 1..50 or None"),
    (lambda: f.fashion_mnist("train", n=51), "n=51 is out of range"),
    (lambda: f.fashion_mnist("test", n=5, start=26), "allowed: 1..4 or None"),
    (lambda: f.fashion_mnist("test", start=30), "start=30 is out of range for the test split (30 images); allowed: 0..29"),
    (lambda: f.fashion_mnist("test", start=-1), "start=-1 is out of range"),
    (lambda: f.fashion_mnist("test", n=1.5), "n must be an integer, not float (1.5)"),
    (lambda: f.fashion_mnist("test", n=False), "n must be an integer, not a bool"),
    (lambda: f.fashion_split(15, 10), "n_train=15 cannot be split evenly over 10 classes; allowed: a multiple of 10 from 10 to 50"),
    (lambda: f.fashion_split(10, 40), "n_test=40 cannot be split evenly over 10 classes; allowed: a multiple of 10 from 10 to 30"),
    (lambda: f.fashion_split(0, 10), "n_train=0 cannot be split evenly"),
    (lambda: f.fashion_split(10, 10, seed=-1), "seed must be a non-negative integer, not -1"),
    (lambda: f.fashion_split(10, 10, seed=1.0), "seed must be an integer, not float"),
    (lambda: f.fashion_rgb(np.zeros((2, 28, 28), np.float32)), "images is an array of dtype float32 and shape (2, 28, 28); allowed: uint8"),
    (lambda: f.fashion_rgb(np.zeros((1, 2, 28, 28), np.uint8)), "shape (1, 2, 28, 28); allowed"),
    (lambda: f.fashion_rgb(np.zeros((0, 28, 28), np.uint8)), "shape (0, 28, 28)"),
    (lambda: f.fashion_rgb("picture"), "dtype <U7"),
    (lambda: f.fashion_rgb(np.zeros((28, 28), np.uint8), size=-3), "size must be a positive number of pixels, not -3"),
    (lambda: f.fashion_rgb(np.zeros((28, 28), np.uint8), resample="box"), "unknown resample 'box'; valid resamples: bicubic, nearest"),
])
def test_bad_arguments_are_one_line(fake, call, match):
    _one_line(call, match)


def test_missing_asset_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    _one_line(f.fashion_mnist, "Fashion-MNIST is not usable: asset 'fashion-mnist' is missing; run: tokenlab fetch --tier vision",
              "(or this asset alone: tokenlab fetch --name fashion-mnist)")
    _one_line(lambda: f.fashion_split(10, 10), "tokenlab fetch --name fashion-mnist")
    _one_line(lambda: f.fashion_mnist("val"), "unknown split 'val'")                     # arguments are checked first


@pytest.mark.parametrize("damage, match", [
    (lambda p: _replace(p, b"not gzip"), "train-labels-idx1-ubyte.gz cannot be read (BadGzipFile"),
    (lambda p: _replace(p, p.read_bytes()[:-10]), "cannot be read (EOFError"),
    (lambda p: _write_idx(p, np.zeros((50, 1), np.uint8)), "is not an idx file of unsigned bytes with 1 dimensions: magic number 00000802, expected 00000801"),
    (lambda p: _write_idx(p, np.zeros(49, np.uint8)), "images (50, 28, 28) and labels (49,) up to 0; expected (50, 28, 28) and (50,) in 0..9"),
    (lambda p: _write_idx(p, np.full(50, 10, np.uint8)), "labels (50,) up to 10"),
])
def test_damaged_file_is_refused_and_names_the_repair(fake, damage, match):
    f.fashion_mnist("train")                       # cached before the damage; a file replaced (new inode, size or time) is read again
    damage(fake / f.SPLIT_FILES["train"][1])
    _one_line(lambda: f.fashion_mnist("train"), match, "run: tokenlab fetch --name fashion-mnist")


def test_idx_data_length_must_match_its_header(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 3, 4) + b"\0" * 11)
    _one_line(lambda: f.read_idx(p, 2), "x.idx holds 11 bytes of data; its idx header says 3 x 4 = 12")
    p.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 3, 4) + bytes(range(12)))
    assert f.read_idx(p, 2).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_balanced_indices_on_unbalanced_labels():
    labels = np.random.default_rng(7).integers(0, 10, 400)
    smallest = int(np.bincount(labels).min())
    i = f.balanced_indices(labels, 10 * smallest, 3)
    assert np.bincount(labels[i], minlength=10).tolist() == [smallest] * 10 and (np.diff(i) > 0).all() and i.dtype == np.int64
    assert np.array_equal(f.balanced_indices(labels, 10 * smallest, 3), i)                  # the same seed, the same subset
    assert not np.array_equal(f.balanced_indices(labels, 10 * smallest, 4), i)
    assert set(f.balanced_indices(labels, 20, 3)) <= set(i)                                  # nested for one seed
    _one_line(lambda: f.balanced_indices(labels, 10 * smallest + 10, 3), f"allowed: a multiple of 10 from 10 to {10 * smallest}")


def test_subsets_balanced_deterministic_and_seeded(fake):
    tr, te = f.fashion_split(30, 20, seed=5)
    assert (tr.split, te.split, len(tr), len(te)) == ("train", "test", 30, 20)
    assert np.bincount(tr.labels).tolist() == [3] * 10 and np.bincount(te.labels).tolist() == [2] * 10
    assert tr.labels.dtype == np.int64 and tr.images.dtype == np.uint8 and tr.images.shape == (30, 28, 28)
    assert np.array_equal(tr.images[:, 0, 0], tr.indices) and np.array_equal(te.labels, te.indices % 10)
    again = f.fashion_split(30, 20, seed=5)
    assert all(np.array_equal(a.indices, b.indices) and np.array_equal(a.images, b.images) for a, b in zip(again, (tr, te)))
    other = f.fashion_split(30, 20, seed=6)
    assert not np.array_equal(other[0].indices, tr.indices) and not np.array_equal(other[1].indices, te.indices)
    assert np.array_equal(f.fashion_split(30, 10, seed=5)[0].indices, tr.indices)           # train does not depend on n_test
    assert np.array_equal(f.fashion_split(50, 20, seed=5)[1].indices, te.indices)           # test does not depend on n_train


def test_rgb_pictures_feed_dinov2_preprocess():
    from tokenlab.vision.dinov2 import preprocess
    g = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    pics = f.fashion_rgb(g)
    assert [(p.mode, p.size) for p in pics] == [("RGB", (224, 224))] * 2
    a = np.asarray(pics[0])
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    near = np.asarray(f.fashion_rgb(g[0], resample="nearest")[0])
    assert np.array_equal(near[..., 0], np.kron(g[0], np.ones((8, 8), np.uint8)))
    assert tuple(preprocess(pics).shape) == (2, 3, 224, 224)


# --- on the real files ------------------------------------------------------------------------------------------------

@needs_real
def test_real_splits():
    x, y = f.fashion_mnist("train")
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((60000, 28, 28), np.uint8, (60000,), np.int64)
    assert np.bincount(y).tolist() == [6000] * 10 and y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    xt, yt = f.fashion_mnist("test")
    assert xt.shape == (10000, 28, 28) and np.bincount(yt).tolist() == [1000] * 10 and yt[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert (int(x.min()), int(x.max())) == (0, 255)
    xs, ys = f.fashion_mnist("train", n=100, start=59900)
    assert np.array_equal(xs, x[59900:]) and np.array_equal(ys, y[59900:])
    _one_line(lambda: f.fashion_mnist("test", n=10001), "allowed: 1..10000 or None")


@needs_real
def test_real_subsets():
    tr, te = f.fashion_split(200, 100, seed=0)
    assert np.bincount(tr.labels).tolist() == [20] * 10 and np.bincount(te.labels).tolist() == [10] * 10
    x, y = f.fashion_mnist("train")
    assert np.array_equal(tr.images, x[tr.indices]) and np.array_equal(tr.labels, y[tr.indices])
    assert np.array_equal(te.labels, f.fashion_mnist("test")[1][te.indices])
    assert np.array_equal(f.fashion_split(200, 100, seed=0)[0].indices, tr.indices)
    assert not np.array_equal(f.fashion_split(200, 100, seed=1)[0].indices, tr.indices)
    _one_line(lambda: f.fashion_split(60010, 10), "n_train=60010 cannot be split evenly over 10 classes; allowed: a multiple of 10 from 10 to 60000")
