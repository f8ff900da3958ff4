"""Setting search for the arithmetic claim (Singh & Strouse 2024): the smallest tiny-Llama setting that learns 2-4 digit addition."""
from __future__ import annotations
import json, sys, time
from pathlib import Path

DESCRIPTION = ("Setting search of nbs/experiments/tokenizer_arithmetic (SENSITIVITY.md, 'Singh & Strouse'): seed 99 only "
               "(never an evaluation seed); per setting one tiny Llama per number tokenization (digits, l2r3, r2l3) trained "
               "with tokenlab.models.trainer.train_lm on tokenlab.tokenizers.numbers.AdditionTask (loss on the answer tokens, "
               "answer chunked like the operands, not reversed), scored by greedy exact match on N_EVAL held-out additions "
               "(never drawn in training). A setting qualifies when the mean over the three tokenizations of the final "
               "exact match is >= 0.5. Seconds: process CPU time of one thread (train + evaluations), summed over the "
               "three tokenizations. Settings are tried cheapest first; 'chosen' is the cheapest qualifying one.")
SEED, N_EVAL, QUALIFY = 99, 200, 0.5
SCHEMES = ("digits", "l2r3", "r2l3")
BASE = dict(operand_digits=[2, 4], d_model=64, n_layers=2, n_heads=4, batch_size=64, steps=400, lr=1e-2,
            warmup=20, decay="cosine", curriculum=0.0, weight_decay=0.0)
# name -> overrides of BASE (the previous cpu profile first: the setting that learned nothing)
_C = dict(lr=3e-3, curriculum=0.3)     # the common recipe of the search: AdamW 3e-3, warm-up 5 %, cosine, shorter operands first
SETTINGS = {
    "previous_cpu": dict(),                                                # the setting that learned nothing (400 steps)
    "d64x2_b64_2k": dict(steps=2000, lr=3e-3, warmup=100),
    "d64x2_b64_2k_cur": dict(steps=2000, warmup=100, **_C),
    "d64x2_b64_2k_cur_lr1e-3": dict(steps=2000, warmup=100, **{**_C, "lr": 1e-3}),
    "d32x2_b64_4k_cur": dict(d_model=32, steps=4000, warmup=200, **_C),
    "d64x2_b64_4k_cur": dict(steps=4000, warmup=200, **_C),
    "d64x2_b128_4k_cur_linear": dict(batch_size=128, steps=4000, warmup=200, decay="linear", **_C),
    "d64x3_b64_3k_cur": dict(n_layers=3, steps=3000, warmup=150, **_C),
    "d128x2_b64_1k_cur": dict(d_model=128, steps=1000, warmup=50, **_C),
    "d128x2_b64_2k_cur_lr2e-3": dict(d_model=128, steps=2000, warmup=100, **{**_C, "lr": 2e-3}),
    "d128x2_b64_4k_cur_lr1e-3": dict(d_model=128, steps=4000, warmup=200, **{**_C, "lr": 1e-3}),
    "d128x3_b64_3k_cur_lr1e-3": dict(d_model=128, n_layers=3, steps=3000, warmup=150, **{**_C, "lr": 1e-3}),
    "d128x2_b64_6k_cur_lr1e-3": dict(d_model=128, steps=6000, warmup=300, **{**_C, "lr": 1e-3}),
    "ops2-3_d64x2_b64_2k_cur": dict(operand_digits=[2, 3], steps=2000, warmup=100, **_C),
    "ops2-3_d64x2_b64_4k_cur": dict(operand_digits=[2, 3], steps=4000, warmup=200, **_C),
    "d64x2_b64_8k_cur": dict(steps=8000, warmup=400, **_C),
    "ops2-3_d64x2_b64_12k_cur": dict(operand_digits=[2, 3], steps=12000, warmup=600, **_C),
}
RESULTS = Path(__file__).resolve().parent / "results" / "arith_setting.json"


def train_one(setting: dict, scheme: str, seed: int = SEED, n_eval: int = N_EVAL) -> dict:
    "Train one tiny Llama on `setting` for `scheme`; final held-out exact match, its curve and CPU seconds."
    import torch
    from tokenlab.tokenizers.numbers import AdditionTask
    from tokenlab.models.trainer import tiny_llama, train_lm
    torch.set_num_threads(1)
    s = {**BASE, **setting}
    t0 = time.process_time()
    task = AdditionTask(scheme, tuple(s["operand_digits"]), batch_size=s["batch_size"], n_eval=n_eval, seed=seed,
                        curriculum=int(s["curriculum"] * s["steps"]))
    net = tiny_llama(task.vocab_size, d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"], max_len=64, seed=seed)
    hist = train_lm(net, task, steps=s["steps"], lr=s["lr"], warmup=s["warmup"], decay=s["decay"], seed=seed,
                    weight_decay=s["weight_decay"], eval_fn=task.eval_fn(), eval_every=max(1, s["steps"] // 5), progress=False)
    ev = hist.dropna(subset=["accuracy"])
    return {"exact_match": float(ev.accuracy.iloc[-1]), "digit_accuracy": float(ev.digit_accuracy.iloc[-1]),
            "final_loss": float(hist.loss.iloc[-50:].mean()), "curve": dict(zip(ev.step.astype(int).tolist(), ev.accuracy.round(4).tolist())),
            "seconds": time.process_time() - t0}


def _row(name: str, per: dict) -> dict:
    s = {**BASE, **SETTINGS[name]}
    mean = sum(p["exact_match"] for p in per.values()) / len(per)
    return {"name": name, "settings": s, "exact_match": {k: per[k]["exact_match"] for k in SCHEMES},
            "digit_accuracy": {k: per[k]["digit_accuracy"] for k in SCHEMES},
            "final_loss": {k: per[k]["final_loss"] for k in SCHEMES}, "curves": {k: per[k]["curve"] for k in SCHEMES},
            "mean_exact_match": mean, "qualifies": mean >= QUALIFY, "seconds": sum(p["seconds"] for p in per.values()),
            "seconds_per_model": {k: per[k]["seconds"] for k in SCHEMES}}


def try_setting(name: str) -> dict:
    "One row: the setting, per-tokenization exact match, mean, qualifies, CPU seconds."
    row = _row(name, {sch: train_one(SETTINGS[name], sch) for sch in SCHEMES})
    print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["exact_match"].items())
          + f"; mean {row['mean_exact_match']:.3f} ({'qualifies' if row['qualifies'] else 'no'}), {row['seconds']:.0f} s", flush=True)
    return row


def _summary(rows: list[dict]) -> dict:
    ok = sorted((r for r in rows if r["qualifies"]), key=lambda r: r["seconds"])
    best = ok[0] if ok else max(rows, key=lambda r: r["mean_exact_match"])
    return {"chosen": best["name"] if ok else None, "settings_tried": len(rows), "qualifying": [r["name"] for r in ok],
            "best_mean_exact_match": best["mean_exact_match"], "best_seconds": best["seconds"], "seed": SEED, "n_eval": N_EVAL}


def run(names: list[str] | None = None, rows: list[dict] | None = None) -> dict:
    "Try `names` (default: all SETTINGS) and merge with earlier `rows`; the bench.run result."
    done = {r["name"]: r for r in (rows or [])}
    for n in (list(SETTINGS) if names is None else names): done[n] = try_setting(n)
    rows = [done[n] for n in SETTINGS if n in done]
    return {"ours": _summary(rows), "peers": {}, "rows": rows}


def _job(args):
    name, scheme = args
    return name, scheme, train_one(SETTINGS[name], scheme)


def run_parallel(names: list[str], jobs: int, out: Path) -> list[dict]:
    "Every (setting, tokenization) of `names` in `jobs` one-thread processes (longest first); rows written to `out` as they finish."
    import multiprocessing as mp
    from tokenlab.lab.core import atomic_write_text
    cost = lambda n: (lambda s: s["steps"] * s["batch_size"] * s["d_model"] ** 2 * s["n_layers"])({**BASE, **SETTINGS[n]})
    todo = [(n, sch) for n in sorted(names, key=cost, reverse=True) for sch in SCHEMES]
    per: dict = {}
    rows = []
    with mp.get_context("spawn").Pool(jobs) as pool:
        for name, scheme, r in pool.imap_unordered(_job, todo):
            per.setdefault(name, {})[scheme] = r
            print(f"{name} {scheme}: exact match {r['exact_match']:.3f}, {r['seconds']:.0f} s", flush=True)
            if len(per[name]) == len(SCHEMES):
                rows.append(_row(name, per[name]))
                atomic_write_text(out, json.dumps({"rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":   # python -m bench.arith_setting [--jobs N --out PATH] [NAME ...]: try settings, merged into the JSON
    import argparse, os
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(); ap.add_argument("names", nargs="*"); ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.jobs > 1:
        run_parallel(a.names or list(SETTINGS), a.jobs, a.out or RESULTS.with_suffix(".rows.json")); sys.exit(0)
    from bench.run import machine
    from tokenlab.lab.core import atomic_write_text
    new = run(a.names or None)["rows"]   # (an earlier version ran every setting here: names=[] was taken for 'all')
    old = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []   # re-read: another search may have written
    res = run([], old + new)
    RESULTS.parent.mkdir(exist_ok=True)
    atomic_write_text(RESULTS, json.dumps({"benchmark": "arith_setting", "description": DESCRIPTION, "machine": machine(), **res},
                                          indent=1) + "\n")
    print(json.dumps(res["ours"]))
