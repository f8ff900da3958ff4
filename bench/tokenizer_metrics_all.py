"""Every real tokenizer x every complete UDHR language: load, encode once, all metrics (target: under 60 s on 2 cores)."""
from __future__ import annotations
import time

DESCRIPTION = ("Wall time of tokenlab.metrics.language_metrics for every real registered tokenizer over every complete "
               "UDHR language (all articles): load + encode once + pooled metrics + per-language table; target < 60 s "
               "on 2 cores. Peer: tokenization-scorer (Zouhar et al.'s reference scorer) computing Renyi efficiency "
               "(alpha 2.5, full vocabulary) from the same encodings; the two values must agree. cpu_s: CPU time of "
               "our part, all threads (less sensitive than wall time to other users of the 2 cores).")
TARGET_S = 60.0


def _peer_renyi(ids: list[list[int]], vocab_size: int) -> tuple[float | None, float, str | None]:
    "Renyi efficiency by tokenization-scorer on the same ids, and its time (None and the reason if it is missing)."
    try:
        from tokenization_scorer.metrics import get_metric
    except ImportError as e:
        return None, 0.0, f"tokenization-scorer not installed ({e})"
    import contextlib, io
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):          # it prints the vocabulary size on stderr
        val = get_metric("renyi")(([str(i) for i in x] for x in ids), power=2.5, vocab=vocab_size)
    return float(val), time.perf_counter() - t0, None


def run() -> dict:
    from tokenlab import corpora
    from tokenlab.tokenizers import load_tokenizer, list_tokenizers
    from tokenlab.metrics import language_metrics, word_counts
    t_start, c_start = time.perf_counter(), time.process_time()
    texts = {c: corpora.udhr_articles(c) for c in corpora.udhr_languages().code}
    n_words = word_counts(texts)
    t_text, cpu = time.perf_counter() - t_start, time.process_time() - c_start
    names = list_tokenizers(real_only=True)
    load_s = metrics_s = peer_s = 0.0
    worst, per_tok, skipped = 0.0, {}, None
    for name in names:
        c0, t0 = time.process_time(), time.perf_counter(); tok = load_tokenizer(name); t1 = time.perf_counter()
        pooled, by_lang = language_metrics(tok, texts, corpora.UDHR_ENGLISH, n_words=n_words)
        t2 = time.perf_counter(); cpu += time.process_time() - c0
        load_s += t1 - t0; metrics_s += t2 - t1
        ids = tok.encode_batch([t for c in texts for t in texts[c].values()])   # peer input only; not timed for us
        val, dt, skipped = _peer_renyi(ids, tok.vocab_size)
        if val is not None:
            peer_s += dt; worst = max(worst, abs(val - pooled["renyi_efficiency"]))
        per_tok[name] = round(t2 - t0, 3)
    total = t_text + load_s + metrics_s
    ours = {"seconds": total, "texts_s": t_text, "load_s": load_s, "encode_and_metrics_s": metrics_s,
            "cpu_s": cpu, "tokenizers": len(names), "languages": len(texts), "under_target": total < TARGET_S}
    peers = {"tokenization-scorer (Renyi only, same ids)": {"seconds": peer_s, "max_abs_diff_renyi": worst}}
    if skipped: peers = {"tokenization-scorer": {"skipped": skipped}}
    return {"ours": ours, "peers": peers, "target_s": TARGET_S, "per_tokenizer_s": per_tok}
