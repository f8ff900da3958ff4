"""Prefill latency of a language model fed `inputs_embeds` of n_keep image + n_text text tokens (what every pruner acting
before the LM produces) against the full count, beside the FLOPs ratio and the roofline limit of tokenlab.pruning.cost:
`python -m bench.run pruning_prefill` (config picked by $PRUNING_BENCH_CONFIG, default gpu when CUDA is present, else cpu)
or `python -m bench.pruning_prefill --config cpu|gpu|gpu-tiny`.

Configs:
- cpu: the real SmolLM2-135M (fp32, SDPA, eager HF forward with its dynamic cache) at the parts-VLM sizes (64 image +
  40 text tokens) and a longer case (576 image + 64 text) with the same kept ratios, batch 1 and 8. The CPU's peak and
  bandwidth are estimated in the same run (best of a few fp32 matmuls, best of a few large tensor copies).
- gpu: a random-initialised LLaVA-1.5-7B-shaped LlamaForCausalLM in bf16, 576 image + 64 text tokens, kept 576/192/128/64,
  batch 1 and 8; the eager HF forward and a CUDA-graph path (`static_prefill`: a StaticCache per sequence length, replayed
  through a manually captured torch.cuda.CUDAGraph, or torch.compile(mode="reduce-overhead") with $PRUNING_BENCH_GRAPH=compile).
- gpu-tiny: the gpu config's code on a tiny LlamaConfig, runnable on CPU (the graph path tries torch.compile there and
  falls back to the static-cache eager forward when compiling fails, recording why).

Timing: per (case, batch, path) group, one warm-up round (the GPU: 3), then rounds that time every kept count once, in
alternating order (interleaved, so drift on a shared machine hits every count alike); median per count. Rounds per
group: up to $PRUNING_BENCH_REPEATS (20), cut to what fits $PRUNING_BENCH_GROUP_S seconds (CPU default 45, so that the
cpu config stays near 3 minutes on 2 idle cores) but never below 3: recorded per row. The CPU rates are estimated
before and after the timings; the roofline uses the higher of each (the machine is shared: contention lowers both)."""
from __future__ import annotations
import argparse, json, math, os, statistics, sys, time

CONFIGS = ("cpu", "gpu", "gpu-tiny")
REPEATS = int(os.environ.get("PRUNING_BENCH_REPEATS", "20"))
MIN_REPEATS = 3
GROUP_S = float(os.environ.get("PRUNING_BENCH_GROUP_S", "45"))
GRAPH = os.environ.get("PRUNING_BENCH_GRAPH", "cuda_graph")       # gpu config: cuda_graph | compile | none
PARTS_KEEP = (64, 32, 21, 14, 7, 3)                                # of 64 image tokens: 100, 50, 33, 22, 11, 5 %
DESCRIPTION = ("Prefill latency (median ms) of an LM fed inputs_embeds of n_keep image + n_text text tokens against the "
               "full count in the same run, at batch 1 and 8; beside each: the measured speed-up, the FLOPs ratio and the "
               "roofline limit (tokenlab.pruning.cost, peak and bandwidth estimated in the same run on CPU, data-sheet presets "
               "on H100/H200). cpu: SmolLM2-135M fp32, 64+40 and 576+64 tokens, kept 100/50/33/22/11/5 %; gpu: random "
               "LLaVA-1.5-7B-shaped Llama bf16, 576+64, kept 576/192/128/64, eager and CUDA-graph (static cache).")


# ---------------------------------------------------------------- rates of the machine
def _sync(device) -> None:
    import torch
    if str(device).startswith("cuda"): torch.cuda.synchronize()


def measure_rates(device="cpu", dtype=None, n: int | None = None, copy_mib: int = 256, tries: int = 5) -> dict:
    """Estimated peak FLOP/s (best of `tries` n x n matmuls, 2n^3 FLOPs) and bandwidth in bytes/s (best of `tries` copies
    of a `copy_mib` MiB tensor: read + write = 2 x its size). CPU: fp32, n=2048; CUDA: bf16, n=8192."""
    import torch
    cuda = str(device).startswith("cuda")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = n or (8192 if cuda else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    x = torch.empty(copy_mib * 2**20 // 4, device=device, dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    def best(fn) -> float:
        fn(); _sync(device); t = math.inf
        for _ in range(tries):
            t0 = time.perf_counter(); fn(); _sync(device); t = min(t, time.perf_counter() - t0)
        return t
    peak = 2 * n**3 / best(lambda: a @ b)
    bw = 2 * x.numel() * x.element_size() / best(lambda: y.copy_(x))
    return {"peak_flops": peak, "bandwidth": bw, "matmul_n": n, "matmul_dtype": str(dtype).replace("torch.", ""),
            "copy_mib": copy_mib, "tries": tries}


# ---------------------------------------------------------------- the two forward paths
def eager_prefill(model, embeds):
    "The plain HF forward (dynamic cache built as for generation, logits of the last position only)."
    import torch
    def run():
        with torch.no_grad(): return model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).logits
    return run


def static_prefill(model, embeds, graph: str = "none"):
    """A prefill of `embeds` (B, n, d) into a StaticCache of exactly n positions, the model unchanged: returns (run, info),
    `run()` giving the last position's logits. graph: "none" (the static-cache eager forward), "cuda_graph" (one
    manually captured torch.cuda.CUDAGraph, replayed), "compile" (torch.compile(mode="reduce-overhead", dynamic=False):
    one compiled function per sequence length). The step resets the cache's fill counters itself, so every call
    rewrites all n positions. If compiling or capturing fails, `run` is the static-cache eager forward and
    info["fallback"] says why."""
    import torch
    from transformers import StaticCache
    from tokenlab.lab.core import check_choice
    check_choice("graph mode", graph, ("none", "cuda_graph", "compile"))
    cfg = model.config.get_text_config()
    B, n, _ = embeds.shape
    cache = StaticCache(config=cfg, max_cache_len=n)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache.early_initialization(B, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads, head_dim,
                               embeds.dtype, embeds.device)
    pos = torch.arange(n, device=embeds.device)[None].expand(B, n).contiguous()
    x = embeds.clone()                          # a static input buffer (the graph reads from this address)
    counters = [l.cumulative_length for l in cache.layers if hasattr(l, "cumulative_length")]

    def step(e):
        for c in counters: c.zero_()
        return model(inputs_embeds=e, past_key_values=cache, position_ids=pos, use_cache=True, logits_to_keep=1).logits

    def eager():
        with torch.no_grad(): return step(x)
    info = {"graph": graph, "fallback": None}
    if graph == "none": return eager, info
    try:
        if graph == "compile":
            import torch._dynamo as dynamo
            for k in ("recompile_limit", "cache_size_limit"):       # one compiled graph per (batch, length): many recompiles
                if hasattr(dynamo.config, k): setattr(dynamo.config, k, max(getattr(dynamo.config, k), 256))
            fn = torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)
            def run():
                with torch.no_grad(): return fn(x)
            for _ in range(3): run()                                # compile, record, then replay
            _sync(embeds.device)
            return run, info
        if not embeds.is_cuda: raise RuntimeError("CUDA graphs need a CUDA device")
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3): step(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.no_grad(): out = step(x)
        def replay():
            g.replay(); return out
        info["_graph"] = g
        return replay, info
    except Exception as e:                                          # record, and measure the static-cache eager forward
        info["fallback"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        for c in counters: c.zero_()
        return eager, info


# ---------------------------------------------------------------- timing
def time_interleaved(fns: dict, device, rounds: int = REPEATS, warmup: int = 1, budget_s: float | None = GROUP_S,
                     min_rounds: int = MIN_REPEATS) -> tuple[dict, int]:
    """Seconds per call of every fn in `fns` (name -> zero-argument callable): `warmup` rounds, then up to `rounds` rounds
    each calling every fn once (order reversed every other round), cut to what fits `budget_s` (estimated from the
    last warm-up round) but at least `min_rounds`. Returns ({name: [seconds...]}, rounds run)."""
    names = list(fns)
    for _ in range(warmup):
        t0 = time.perf_counter()
        for k in names: fns[k](); _sync(device)
        per_round = time.perf_counter() - t0
    if budget_s is not None and warmup:
        rounds = max(min(rounds, int(budget_s / max(per_round, 1e-9))), min(min_rounds, rounds))
    times = {k: [] for k in names}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            _sync(device); t0 = time.perf_counter(); fns[k](); _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times, rounds


def _rows(case, lm_config, n_image, n_text, keeps, batch, path, times, rounds, rates, dtype_bytes, extra=None) -> list[dict]:
    "One row per kept count: median ms, speed-up over the full count, FLOPs ratio, roofline limits (+ extra fields)."
    from tokenlab.pruning.cost import prefill_cost, flops_ratio
    if n_image not in times: raise ValueError("the kept counts must include n_image (the full forward)")
    full = prefill_cost(lm_config, n_image, n_text, batch=batch, dtype_bytes=dtype_bytes)
    med_full = statistics.median(times[n_image])
    rows = []
    for k in keeps:
        c = prefill_cost(lm_config, n_image, n_text, n_keep=k, batch=batch, dtype_bytes=dtype_bytes)
        t = sorted(times[k]); med = statistics.median(t)
        row = {"case": case, "path": path, "batch": batch, "n_image": n_image, "n_text": n_text, "n_keep": k,
               "kept_pct": round(100 * k / n_image, 1), "tokens": k + n_text, "rounds": rounds, "dtype_bytes": dtype_bytes,
               "median_ms": round(1e3 * med, 3), "min_ms": round(1e3 * t[0], 3), "max_ms": round(1e3 * t[-1], 3),
               "speedup": round(med_full / med, 3), "flops_ratio": round(flops_ratio(full, c), 3),
               "tflop": float(f"{c.flops / 1e12:.4g}"), "gb_moved": float(f"{c.bytes_moved / 1e9:.4g}"), **(extra or {})}
        rows.append(_with_limits(row, lm_config, rates or {}))
    return rows


def _with_limits(row: dict, lm_config, rates: dict) -> dict:
    "The row with, per named (peak FLOP/s, bytes/s): the roofline limit, speed-up / limit, roofline ms and the bound."
    from tokenlab.pruning.cost import prefill_cost, roofline_seconds, speedup_limit
    kw = dict(batch=row["batch"], dtype_bytes=row["dtype_bytes"])
    full = prefill_cost(lm_config, row["n_image"], row["n_text"], **kw)
    c = prefill_cost(lm_config, row["n_image"], row["n_text"], n_keep=row["n_keep"], **kw)
    row = dict(row)
    for name, (peak, bw) in rates.items():
        lim = speedup_limit(full, c, peak, bw)
        row[f"limit_{name}"] = round(lim, 3)
        row[f"speedup_of_limit_{name}"] = round(row["speedup"] / lim, 3)
        row[f"roofline_ms_{name}"] = round(1e3 * roofline_seconds(c, peak, bw), 3)
        row[f"bound_{name}"] = "compute" if c.flops / peak >= c.bytes_moved / bw else "memory"
    return row


def measure(model, cases, batches, paths, device, dtype, rates: dict | None, warmup: int = 1, budget_s=GROUP_S,
            rounds: int = REPEATS, seed: int = 0) -> list[dict]:
    """Rows for every case (name, n_image, n_text, keeps) x batch x path ("eager", or a static_prefill graph mode
    written "static:<mode>"); random embeddings (std 0.02: the scale of an embedding table) of the model's width.
    `rates` {name: (peak FLOP/s, bytes/s)} adds roofline limits (None: add them later with `_with_limits`)."""
    import gc, torch
    d = model.config.get_text_config().hidden_size
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    for case, n_image, n_text, keeps in cases:
        for batch in batches:
            embeds = {k: (0.02 * torch.randn(batch, k + n_text, d, generator=g)).to(device=device, dtype=dtype) for k in keeps}
            for path in paths:
                fns, infos = {}, {}
                for k in keeps:
                    if path == "eager": fns[k], infos[k] = eager_prefill(model, embeds[k]), {}
                    else: fns[k], infos[k] = static_prefill(model, embeds[k], path.split(":", 1)[1])
                times, r = time_interleaved(fns, device, rounds=rounds, warmup=warmup, budget_s=budget_s)
                fb = sorted({i["fallback"] for i in infos.values() if i.get("fallback")})
                extra = {"fallback": fb[0] if fb else None} if path != "eager" else {}
                rows += _rows(case, model.config.get_text_config(), n_image, n_text, keeps, batch, path, times, r, rates,
                              torch.tensor([], dtype=dtype).element_size(), extra)
                print(_line(rows[-len(keeps):]) + f" [load {os.getloadavg()[0]:.1f}]", flush=True)
                del fns, infos; gc.collect()
                if str(device).startswith("cuda"): torch.cuda.empty_cache()
    return rows


def _line(rows) -> str:
    r0 = rows[0]
    lim = next((k for k in r0 if k.startswith("limit_")), None)
    return (f"{r0['case']} batch {r0['batch']} {r0['path']} ({r0['rounds']} rounds): "
            + "; ".join(f"{r['n_keep']}: {r['median_ms']:.1f} ms x{r['speedup']:.2f} (FLOPs x{r['flops_ratio']:.2f}"
                        + (f", roofline x{r[lim]:.2f})" if lim else ")") for r in rows))


# ---------------------------------------------------------------- configurations
def llava7b_config():
    "The language model of LLaVA-1.5-7B (Vicuna-7B = Llama-2-7B shape)."
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)


def tiny_config():
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=100)


def random_llama(config, dtype, device, seed: int = 0):
    "A random-initialised LlamaForCausalLM built directly on `device` in `dtype` (SDPA), eval mode."
    import torch
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    old = torch.get_default_dtype(); torch.set_default_dtype(dtype)
    try:
        with torch.device(device): model = LlamaForCausalLM(config)
    finally: torch.set_default_dtype(old)
    return model.eval()


def _preset(device) -> tuple[str, tuple] | None:
    import torch
    from tokenlab.pruning.cost import DEVICES
    name = torch.cuda.get_device_name(device).lower()
    for k in ("h200", "h100"):
        if k in name: return k, DEVICES[k]
    return None


def run_config(config: str) -> dict:
    import torch
    from tokenlab.lab.core import TokenlabError, check_choice
    check_choice("config", config, CONFIGS)
    meta = {"config": config, "threads": torch.get_num_threads(), "statistic": "median over interleaved rounds",
            "max_rounds": REPEATS, "min_rounds": MIN_REPEATS, "group_budget_s": GROUP_S, "logits": "last position only",
            "embeddings": "random, std 0.02", "load_average_1min": [os.getloadavg()[0]]}
    t_start = time.perf_counter()
    if config == "cpu":
        from tokenlab.lab.assets import smollm2_path
        from tokenlab.models.loading import load_model
        device, dtype = "cpu", torch.float32
        model = load_model(smollm2_path(), dtype=dtype, device=device)      # SDPA
        with torch.no_grad():                                               # first forwards are slow: not timed
            for n in (104, 640): model(inputs_embeds=torch.zeros(1, n, model.config.hidden_size), logits_to_keep=1)
        m = measure_rates(device)
        long_keep = tuple(9 * k for k in PARTS_KEEP)                         # 576 = 9 x 64: the same ratios
        cases = [("parts", 64, 40, PARTS_KEEP), ("long", 576, 64, long_keep)]
        rows = measure(model, cases, (1, 8), ("eager",), device, dtype, rates=None)
        m2 = measure_rates(device)
        best = {"peak_flops": max(m["peak_flops"], m2["peak_flops"]), "bandwidth": max(m["bandwidth"], m2["bandwidth"])}
        rates = {"measured": (best["peak_flops"], best["bandwidth"])}
        rows = [_with_limits(r, model.config, rates) for r in rows]
        for i in range(0, len(rows), len(PARTS_KEEP)): print(_line(rows[i:i + len(PARTS_KEEP)]))
        meta.update(model="SmolLM2-135M-Instruct (real weights)", dtype="float32", device="cpu", attention="sdpa",
                    rates={**m, "before": {k: m[k] for k in best}, "after": {k: m2[k] for k in best}, "used": best},
                    paths={"eager": "HF forward, dynamic cache"},
                    note=("rounds per group are cut to fit group_budget_s (the long case at batch 8 gets a few rounds, not 20) "
                          "so that the whole config runs in about 2.5 minutes on 2 cores; every row records its rounds. On CPU "
                          "every row is compute-bound, so the roofline limit equals the FLOPs ratio; speed-ups above it mean the "
                          "larger forward runs below the matmul rate (elementwise ops and attention on intermediates that "
                          "leave the caches), which a roofline that counts matmul FLOPs and minimal bytes does not see."))
    else:
        cuda = config == "gpu"
        if cuda and not torch.cuda.is_available():
            raise TokenlabError("config 'gpu' needs CUDA; on CPU use config 'gpu-tiny' (tiny shape) or 'cpu'")
        device = "cuda" if cuda else "cpu"
        dtype = torch.bfloat16 if cuda else torch.float32
        cfg = llava7b_config() if cuda else tiny_config()
        model = random_llama(cfg, dtype, device)
        m = measure_rates(device) if cuda else measure_rates(device, n=512, copy_mib=64)
        rates = {"measured": (m["peak_flops"], m["bandwidth"])}
        p = _preset(device) if cuda else None
        if p: rates = {p[0]: p[1], **rates}
        graph = GRAPH if cuda else "compile"
        cases = [("llava7b", 576, 64, (576, 192, 128, 64))] if cuda else [("tiny", 24, 8, (24, 12, 6))]
        rows = measure(model, cases, (1, 8), ("eager", f"static:{graph}"), device, dtype, rates,
                       warmup=3 if cuda else 1, budget_s=None if cuda else GROUP_S, rounds=REPEATS if cuda else 5)
        meta.update(model=("random LLaVA-1.5-7B-shaped LlamaForCausalLM" if cuda else "random tiny LlamaForCausalLM"),
                    model_config={k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                               "num_key_value_heads", "intermediate_size", "vocab_size")},
                    dtype=str(dtype).replace("torch.", ""), device=torch.cuda.get_device_name() if cuda else "cpu",
                    attention="sdpa", rates=m, presets={k: v for k, v in rates.items() if k != "measured"},
                    paths={"eager": "HF forward, dynamic cache",
                           f"static:{graph}": f"StaticCache of the sequence's length, graph mode {graph!r} (bench.pruning_prefill.static_prefill)"})
        if graph == "compile":                                  # CUDA graphs that inductor skipped (a slow replay)
            from torch._dynamo.utils import counters
            meta["inductor_cudagraph_counters"] = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    meta["load_average_1min"].append(os.getloadavg()[0])
    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    lim = "limit_" + next(iter(rates))
    ours = {f"{r['case']}_b{r['batch']}_{r['path']}_keep{r['n_keep']}_speedup": r["speedup"] for r in rows if r["n_keep"] != r["n_image"]}
    ours.update({f"{r['case']}_b{r['batch']}_{r['path']}_keep{r['n_keep']}_{lim}": r[lim] for r in rows if r["n_keep"] != r["n_image"]})
    peers = {"full count, same run": {f"{r['case']}_b{r['batch']}_{r['path']}_ms": r["median_ms"] for r in rows if r["n_keep"] == r["n_image"]}}
    return {"ours": ours, "peers": peers, "rows": rows, "config": meta}


def run() -> dict:
    import torch
    return run_config(os.environ.get("PRUNING_BENCH_CONFIG") or ("gpu" if torch.cuda.is_available() else "cpu"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pruning_prefill", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=CONFIGS, default=None, help="default: gpu when CUDA is present, else cpu")
    p.add_argument("--out", default=None, help="write the JSON here instead of bench/results/pruning_prefill.json")
    a = p.parse_args(argv)
    if a.config: os.environ["PRUNING_BENCH_CONFIG"] = a.config
    if a.out is None:
        from bench.run import run_one
        run_one("pruning_prefill"); return 0
    from bench.run import machine
    res = run()
    with open(a.out, "w") as f: json.dump({"benchmark": "pruning_prefill", "description": DESCRIPTION, "machine": machine(), **res}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
