// Tokenize inputs with llama.cpp's own tokenizer (vocab-only load). Usage: tok <model.gguf> <inputs> <parse_special 0|1>
// inputs: texts separated by "\n__ggml_vocab_test__\n" (llama.cpp's .inp format); prints one line of ids per text (.out format).
#include "llama.h"
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
int main(int argc, char ** argv) {
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    auto mp = llama_model_default_params(); mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::ifstream f(argv[2]); std::stringstream ss; ss << f.rdbuf(); std::string all = ss.str();
    bool parse_special = argc > 3 && std::string(argv[3]) == "1";
    const std::string marker = "\n__ggml_vocab_test__\n";
    size_t pos = 0;
    while (pos < all.size()) {
        size_t nxt = all.find(marker, pos);
        if (nxt == std::string::npos) nxt = all.size();
        std::string text = all.substr(pos, nxt - pos);
        std::vector<llama_token> toks(text.size() * 4 + 16);
        int n = llama_tokenize(vocab, text.data(), (int) text.size(), toks.data(), (int) toks.size(), false, parse_special);
        for (int i = 0; i < n; i++) printf(" %d", toks[i]);
        printf("\n");
        pos = nxt + marker.size();
    }
    llama_model_free(model); llama_backend_free();
    return 0;
}
