"""Research BPE training time: tokenlab.tokenizers.bpe vs HF tokenizers' BpeTrainer (8k merges, ~12 MB) and vs minbpe (slice)."""
from __future__ import annotations
import os, subprocess, sys, tempfile, time
from pathlib import Path

DESCRIPTION = ("Wall time to learn 8,000 byte-level BPE merges on the English corpus (~12 MB, split at newlines): "
               "tokenlab.tokenizers.bpe.train_bpe vs HF tokenizers' BpeTrainer (tokenlab.tokenizers.train.train_tokenizer, same GPT-2 "
               "pre-tokenisation; merges compared). Targets: within 5x of HF. Then, on a slice of SLICE_BYTES bytes "
               "with SLICE_MERGES merges, vs karpathy/minbpe's RegexTokenizer (recounts every pair each merge; run "
               "from a checkout given by $MINBPE_DIR or a git mirror at $MINBPE_GIT, never copied here); target >= 20x.")
MERGES = 8000
SLICE_BYTES, SLICE_MERGES = 200_000, 200
MIRROR = Path("/work/.mirror/karpathy+minbpe/repo")


def _minbpe_dir() -> tuple[Path | None, str]:
    "A folder holding the minbpe package: $MINBPE_DIR, or extracted from the git mirror $MINBPE_GIT."
    if os.environ.get("MINBPE_DIR"): return Path(os.environ["MINBPE_DIR"]), "MINBPE_DIR"
    git = Path(os.environ.get("MINBPE_GIT", MIRROR))
    if not git.exists(): return None, f"no minbpe checkout (set MINBPE_DIR or MINBPE_GIT; looked at {git})"
    d = Path(tempfile.mkdtemp(prefix="minbpe-")); (d / "minbpe").mkdir()
    commit = subprocess.run(["git", "-C", str(git), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for f in ("__init__.py", "base.py", "basic.py", "regex.py", "gpt4.py"):
        src = subprocess.run(["git", "-C", str(git), "show", f"HEAD:minbpe/{f}"], capture_output=True, text=True, check=True).stdout
        (d / "minbpe" / f).write_text(src)
    return d, f"karpathy/minbpe@{commit[:12]}"


def _time(fn):
    t0 = time.perf_counter(); out = fn(); return out, time.perf_counter() - t0


def run() -> dict:
    from tokenlab.lab.corpora import english_corpus
    from tokenlab.tokenizers.bpe import train_bpe, read_hf_bpe, BPE_SPLIT
    from tokenlab.tokenizers.train import train_tokenizer
    text = english_corpus()
    chunks = text.split("\n")
    hf, t_hf = _time(lambda: train_tokenizer(chunks, "bpe", 256 + MERGES))
    ours, t_ours = _time(lambda: train_bpe(chunks, 256 + MERGES, progress=False))
    hm = read_hf_bpe(hf.to_hf())[1]
    same = hm == [(ours.vocab[a], ours.vocab[b]) for a, b in ours.merges]
    res = {"ours": {"seconds_8k_merges": t_ours, "corpus_MB": len(text.encode()) / 1e6, "merges": len(ours.merges),
                    "x_slower_than_hf": t_ours / t_hf, "within_5x_of_hf": t_ours / t_hf <= 5, "merges_identical_to_hf": same},
           "peers": {"hf-tokenizers BpeTrainer": {"seconds_8k_merges": t_hf, "merges": len(hm)}}}
    sl = text[:SLICE_BYTES]
    ours_s, t_ours_s = _time(lambda: train_bpe([sl], 256 + SLICE_MERGES, progress=False))
    res["ours"]["seconds_slice"] = t_ours_s
    d, where = _minbpe_dir()
    if d is None:
        res["peers"]["minbpe RegexTokenizer"] = {"skipped": where}
        return res
    sys.path.insert(0, str(d))
    try:
        from minbpe import RegexTokenizer
        peer = RegexTokenizer(BPE_SPLIT)
        _, t_peer = _time(lambda: peer.train(sl, 256 + SLICE_MERGES))
    finally:
        sys.path.remove(str(d))
    pm = [(peer.vocab[a], peer.vocab[b]) for (a, b) in peer.merges]
    om = [(ours_s.vocab[a], ours_s.vocab[b]) for a, b in ours_s.merges]
    res["peers"]["minbpe RegexTokenizer"] = {"source": where, "seconds_slice": t_peer,
                                             "slice": f"{SLICE_BYTES} bytes, {SLICE_MERGES} merges",
                                             "ours_x_faster": t_peer / t_ours_s, "at_least_20x": t_peer / t_ours_s >= 20,
                                             "same_merge_set": sorted(pm) == sorted(om)}
    return res
