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
