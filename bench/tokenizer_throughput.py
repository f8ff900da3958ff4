"""Encoding throughput (MB/s of UTF-8) of tokenlab's `gpt2` vs tiktoken and HF `tokenizers` on the same ranks."""
from __future__ import annotations
import time

DESCRIPTION = ("MB/s encoding the first 2 MB of tokenlab.lab.corpora.english_corpus() line by line with GPT-2 ranks: "
               "tokenlab load_tokenizer('gpt2').encode_batch vs tiktoken and HF tokenizers (ByteLevel BPE)")
LIMIT = 2_000_000
REPEATS = 3


def _need():
    "Import the tokenlab modules this benchmark needs, with a clear message if they are missing."
    try:
        from tokenlab.lab import corpora
        from tokenlab import tokenizers
        from tokenlab.lab import assets
        return corpora, tokenizers, assets
    except ImportError as e:
        from tokenlab.lab.core import TokenlabError
        raise TokenlabError(f"tokenizer_throughput needs tokenlab.lab.corpora, tokenlab.tokenizers and tokenlab.lab.assets ({e})")


def _measure(encode, lines, nbytes) -> dict:
    "Best of REPEATS wall times of `encode(lines)` -> MB/s, seconds, tokens."
    best, n = float("inf"), 0
    for _ in range(REPEATS):
        t0 = time.perf_counter(); out = encode(lines); best = min(best, time.perf_counter() - t0)
        n = sum(map(len, out))
    return {"MB_per_s": nbytes / 1e6 / best, "seconds": best, "tokens": n}


def run() -> dict:
    corpora, tokenizers, assets = _need()
    import tiktoken
    text = corpora.english_corpus(limit_bytes=LIMIT)
    lines = [l for l in text.splitlines(keepends=True) if l]
    nbytes = len(text.encode("utf-8"))
    ours = tokenizers.load_tokenizer("gpt2")
    ranks_file = assets.asset_path("whisper", "openai_whisper-20250625", "whisper", "assets", "gpt2.tiktoken")
    ranks = tokenizers.read_tiktoken_file(ranks_file)
    enc = tiktoken.Encoding("gpt2-peer", pat_str=tokenizers.GPT2_PAT, mergeable_ranks=ranks, special_tokens={})
    res = {"ours": _measure(ours.encode_batch, lines, nbytes), "peers": {}}
    res["peers"]["tiktoken (encode_ordinary_batch)"] = _measure(enc.encode_ordinary_batch, lines, nbytes)
    res["peers"]["tiktoken (1 thread, loop)"] = _measure(lambda ls: [enc.encode_ordinary(l) for l in ls], lines, nbytes)
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter
        hf = TikTokenConverter(vocab_file=str(ranks_file), pattern=tokenizers.GPT2_PAT).converted()
        res["peers"]["HF tokenizers ByteLevel BPE (encode_batch)"] = _measure(
            lambda ls: [e.ids for e in hf.encode_batch(ls, add_special_tokens=False)], lines, nbytes)
    except Exception as e:                               # the peer is optional
        res["peers"]["HF tokenizers ByteLevel BPE (encode_batch)"] = {"error": f"{type(e).__name__}: {e}"}
    same = ours.encode_batch(lines[:200]) == enc.encode_ordinary_batch(lines[:200])
    res["ours"]["same_ids_as_tiktoken"] = same
    res["input"] = {"bytes": nbytes, "lines": len(lines), "repeats": REPEATS, "statistic": "best wall time"}
    return res
