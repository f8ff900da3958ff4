"""Explorer responsiveness (tokenlab.widgets): how long a control takes to answer over cached results, and a new
512-token text in the attention explorer, vs what a full-matrix attention viewer needs per text (the peer).

Each control is moved by setting its value, as the browser's comm message does; ipywidgets calls the explorer's
observers synchronously, so the time measured is the kernel's whole update (state, HTML). The browser's render of
the HTML is not included (the real-browser test, tests/test_browser.py, checks that the DOM updates).
`python -m bench.run widgets`; threads: $WIDGETS_THREADS (default 2, the cores of the reference machine).
"""
from __future__ import annotations
import os, statistics, time

THREADS = int(os.environ.get("WIDGETS_THREADS", "2"))
N_TOKENS = 512
MOVES = 12                    # moves per control
TARGET_CONTROL_MS, TARGET_TEXT_S = 300, 2.0
DESCRIPTION = (f"tokenlab.widgets on CPU ({THREADS} threads): median and max ms of moving each control of the token "
               f"inspector and the attention explorer ({MOVES} moves each, over cached results; targets "
               f"<= {TARGET_CONTROL_MS} ms), and of the pruning viewer and steering playground over precomputed "
               f"results when the zoo's VLM is there; seconds for a new {N_TOKENS}-token text in the attention explorer "
               f"(SmolLM2-135M-Instruct, one forward with attention statistics and kept queries/keys; target "
               f"<= {TARGET_TEXT_S} s). Peer: what a full-matrix viewer (bertviz-style) needs per text: an eager forward "
               "with output_attentions=True, its time and the size of the L x H x N x N matrices it returns.")


def _texts(tok, n: int, k: int) -> list[str]:
    "k different texts of exactly n tokens of the English corpus."
    from tokenlab.lab.corpora import english_corpus
    ids = tok(english_corpus(400_000), add_special_tokens=False)["input_ids"]
    out = []
    for j in range(k):
        s = 20_000 + j * 3 * n
        t = tok.decode(ids[s:s + n])
        while len(tok(t)["input_ids"]) > n: t = t[:-1]
        out.append(t)
    return out


def _moves(ex, widget, values, moves: int = MOVES) -> dict:
    "Median / max ms of setting widget to the values in turn (cycled)."
    ms = []
    for i in range(moves):
        v = values[i % len(values)]
        if widget.value == v: v = values[(i + 1) % len(values)]
        t = time.perf_counter(); widget.value = v; ms.append(1000 * (time.perf_counter() - t))
        if ex.last_error: raise RuntimeError(f"{type(ex).__name__}.{widget.description}: {ex.last_error}")
    return {"median_ms": round(statistics.median(ms), 2), "max_ms": round(max(ms), 2)}


def _flat(prefix: str, d: dict) -> dict: return {f"{prefix}_{k}": v for k, v in d.items()}


def token_inspector() -> dict:
    from tokenlab.widgets.tokens import TokenInspector, DEFAULT_TOKENIZERS
    from tokenlab.lab.corpora import udhr_articles
    ti = TokenInspector()
    t = time.perf_counter(); ti.tokenizers.value = ("gpt2", "gemma3", "qwen3")     # first use loads two vocabularies
    out = {"tokens_first_load_s": round(time.perf_counter() - t, 3)}                # (not a cached control move)
    out.update(_flat("tokens_tokenizers", _moves(ti, ti.tokenizers, [DEFAULT_TOKENIZERS, DEFAULT_TOKENIZERS[:2], ("gpt2", "gemma3", "qwen3")])))
    texts = [udhr_articles(c)[1] for c in ("hin", "amh", "jpn", "rus")]
    out.update(_flat("tokens_text", _moves(ti, ti.text, texts)))
    return out


def attention_explorer() -> tuple[dict, dict]:
    import torch
    from tokenlab.widgets.attention import AttentionExplorer, METRICS
    ex = AttentionExplorer()
    texts = _texts(ex.state.tokenizer, N_TOKENS, 4)
    ex.text.value = texts[0]                                  # warm-up
    new = []
    for t in texts[1:]:
        s = time.perf_counter(); ex.text.value = t; new.append(time.perf_counter() - s)
        if ex.last_error: raise RuntimeError(ex.last_error)
    n = ex.rec.n
    out = {"attention_new_text_tokens": n, "attention_new_text_s_median": round(statistics.median(new), 3),
           "attention_new_text_s_max": round(max(new), 3)}
    out.update(_flat("attention_layer", _moves(ex, ex.layer, list(range(ex.state.n_layers)))))
    out.update(_flat("attention_head", _moves(ex, ex.head, list(range(ex.state.n_heads)))))
    out.update(_flat("attention_metric", _moves(ex, ex.metric, list(METRICS))))
    out.update(_flat("attention_window", _moves(ex, ex.start, [0, 100, 250, 400, ex.start.max])))
    out["attention_view_kb"] = round(len(ex.view.value) / 1024, 1)
    # the peer: a full-matrix viewer's input, an eager forward with output_attentions=True over the same text
    model = ex.state.model
    ids = ex.state.tokenizer(texts[-1], return_tensors="pt")["input_ids"]
    model.set_attn_implementation("eager")
    try:
        times = []
        for _ in range(3):
            s = time.perf_counter()
            with torch.inference_mode(): att = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
            times.append(time.perf_counter() - s)
        mb = sum(a.numel() * a.element_size() for a in att) / 2**20
    finally: model.set_attn_implementation("sdpa")
    peer = {"eager_output_attentions_s_median": round(statistics.median(times), 3), "attention_matrices_mb": round(mb, 1),
            "tokens": ids.shape[1]}
    return out, peer


def vlm_explorers() -> dict:
    "The pruning viewer and steering playground over precomputed results, when their modules and the zoo's VLM exist."
    out = {}
    try:
        from tokenlab.widgets import pruning as P, steering as S     # noqa: F401
    except ImportError as e:
        return {"vlm_explorers": f"not measured: {e}"}
    for mod, cls in ((P, "PruningViewer"), (S, "SteeringPlayground")):
        bench = getattr(mod, "bench_controls", None)
        if bench is None: out[f"{cls}"] = "not measured: no bench_controls"; continue
        out.update({f"{cls}_{k}": v for k, v in bench(moves=MOVES).items()})
    return out


def run() -> dict:
    import torch
    torch.set_num_threads(THREADS)
    ours = {}
    ours.update(token_inspector())
    att, peer = attention_explorer()
    ours.update(att)
    ours.update(vlm_explorers())
    ctl = [v for k, v in ours.items() if k.endswith("max_ms") and isinstance(v, (int, float))]
    ours["all_controls_max_ms"] = max(ctl)
    ours["controls_within_target"] = max(ctl) <= TARGET_CONTROL_MS
    ours["new_text_within_target"] = ours["attention_new_text_s_max"] <= TARGET_TEXT_S
    return {"ours": ours, "peers": {"full_matrix_viewer": peer},
            "config": {"threads": THREADS, "tokens": N_TOKENS, "moves": MOVES, "targets": {"control_ms": TARGET_CONTROL_MS, "new_text_s": TARGET_TEXT_S}}}


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=1))
