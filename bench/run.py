"""Run named benchmarks and write bench/results/<name>.json: `python -m bench.run NAME | --all | --list`."""
from __future__ import annotations
import argparse, datetime, importlib, json, platform, subprocess, sys
from pathlib import Path

BENCHMARKS = {
    "tokenizer_throughput": "bench.tokenizer_throughput",
    "tokenizer_metrics_all": "bench.tokenizer_metrics_all",
    "bpe_train": "bench.bpe_train",
    "mixture_lp": "bench.mixture_lp",
    "attn_stats": "bench.attn_stats",
    "dinov2": "bench.dinov2",
    "steering_cost": "bench.steering_cost",
    "pruning_prefill": "bench.pruning_prefill",
    "widgets": "bench.widgets",
    "arith_setting": "bench.arith_setting",
}
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    "CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    "Where and when: device description, CPU model, UTC date, git commit."
    from tokenlab.lab.core import device_description, repo_root
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True).stdout.strip() or None
    except OSError: commit = None
    return {**device_description(), "cpu_model": cpu_model(),
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(), "git_commit": commit}


def table(name: str, res: dict) -> str:
    "Rows: ours, then each peer; columns: the union of their metrics."
    from tabulate import tabulate
    rows = {"tokenlab": res["ours"], **res["peers"]}
    cols = list(dict.fromkeys(k for r in rows.values() for k in r))
    return tabulate([[n, *[r.get(c, "") for c in cols]] for n, r in rows.items()], [name, *cols],
                    tablefmt="pipe", floatfmt=".3g")


def run_one(name: str) -> dict:
    "Run benchmark `name`, write its JSON, print its table."
    from tokenlab.lab.core import atomic_write_text, check_choice
    mod = importlib.import_module(BENCHMARKS[check_choice("benchmark", name, BENCHMARKS)])
    res = mod.run()
    out = {"benchmark": name, "description": mod.DESCRIPTION, "machine": machine(), **res}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(out, indent=1) + "\n")
    print(table(name, res)); print(f"-> {RESULTS / f'{name}.json'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="run every benchmark")
    p.add_argument("--list", action="store_true", help="list benchmarks")
    a = p.parse_args(argv)
    if a.list or not (a.names or a.all):
        for n, m in BENCHMARKS.items():
            try: desc = importlib.import_module(m).DESCRIPTION
            except ImportError as e: desc = f"(unavailable: {e})"
            print(f"{n}: {desc}")
        return 0
    from tokenlab.lab.core import TokenlabError
    try:
        for n in (list(BENCHMARKS) if a.all else a.names): run_one(n)
    except TokenlabError as e:
        print(f"bench: error: {e}", file=sys.stderr); return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
