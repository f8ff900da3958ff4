"""Every real tokenizer x every complete UDHR language: load, encode once, all metrics (target: under 60 s on 2 cores)."""
from __future__ import annotations
import os, time

DESCRIPTION = ("Wall time of tokenlab.tokenizers.metrics.metrics_over_tokenizers (language_metrics of every real registered "
               "tokenizer, METRICS_JOBS processes, default 2) over every complete UDHR language (all articles): load + "
               "encode once + pooled metrics + per-language table; target < 60 s on 2 cores. Peer: tokenization-scorer "
               "(Zouhar et al.'s reference scorer) computing Renyi efficiency (alpha 2.5, full vocabulary) from the same "
               "encodings; the two values must agree. cpu_s: CPU time of our part, all threads and worker processes "
               "(less sensitive than wall time to other users of the 2 cores).")
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
    import resource
    from tokenlab.lab import corpora
    from tokenlab.tokenizers.registry import load_tokenizer, list_tokenizers
    from tokenlab.tokenizers.metrics import metrics_over_tokenizers, word_counts
    jobs = int(os.environ.get("METRICS_JOBS", 2))
    t_start, c_start = time.perf_counter(), time.process_time()
    texts = {c: corpora.udhr_articles(c) for c in corpora.udhr_languages().code}
    n_words = word_counts(texts)
    t_text = time.perf_counter() - t_start
    names = list_tokenizers(real_only=True)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    table, _ = metrics_over_tokenizers(names, texts, corpora.UDHR_ENGLISH, n_words=n_words, jobs=jobs, progress=False)
    metrics_s = time.perf_counter() - t0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - c_start + (kids.ru_utime - kids0.ru_utime) + (kids.ru_stime - kids0.ru_stime)
    total = t_text + metrics_s
    # the peer, outside our timing: the same ids (encoded again here), Renyi efficiency only
    ours_renyi = dict(zip(table.tokenizer, table.renyi_efficiency))
    flat = [t for c in texts for t in texts[c].values()]
    worst, peer_s, skipped = 0.0, 0.0, None
    for name in names:
        tok = load_tokenizer(name)
        val, dt, skipped = _peer_renyi(tok.encode_batch(flat), tok.vocab_size)
        if val is not None:
            peer_s += dt; worst = max(worst, abs(val - ours_renyi[name]))
    ours = {"seconds": total, "texts_s": t_text, "load_encode_and_metrics_s": metrics_s, "jobs": jobs,
            "cpu_s": cpu, "tokenizers": len(names), "languages": len(texts), "under_target": total < TARGET_S}
    peers = {"tokenization-scorer (Renyi only, same ids)": {"seconds": peer_s, "max_abs_diff_renyi": worst}}
    if skipped: peers = {"tokenization-scorer": {"skipped": skipped}}
    return {"ours": ours, "peers": peers, "target_s": TARGET_S}
