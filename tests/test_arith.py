"""Number chunking schemes, the addition task's batches, greedy exact-match scoring and error positions."""
from __future__ import annotations
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.tokenizers.numbers import (SCHEMES, VOCAB, TOKEN_ID, PAD, EOS, AdditionTask, OracleLM, chunk,
                                         encode_number, decode_ids, prompt_ids, answer_ids, predictions, accuracy,
                                         error_positions, greedy_decode)

numbers = st.text(alphabet="0123456789", min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(numbers, st.sampled_from(SCHEMES))
def test_chunks_join_back_and_are_vocabulary_tokens(s, scheme):
    parts = chunk(s, scheme)
    assert "".join(parts) == s
    assert all(1 <= len(p) <= 3 for p in parts) and all(p in TOKEN_ID for p in parts)
    assert "".join(VOCAB[i] for i in encode_number(s, scheme)) == s
    if scheme == "digits": assert len(parts) == len(s)
    else: assert len(parts) == -(-len(s) // 3)


@settings(max_examples=200, deadline=None)
@given(numbers)
def test_l2r_and_r2l_agree_exactly_when_the_length_is_a_multiple_of_3(s):
    assert (chunk(s, "l2r3") == chunk(s, "r2l3")) == (len(s) % 3 == 0 or len(s) < 3)
    l, r = chunk(s, "l2r3"), chunk(s, "r2l3")
    assert all(len(p) == 3 for p in l[:-1]) and all(len(p) == 3 for p in r[1:])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**15), st.integers(0, 10**15), st.sampled_from(SCHEMES))
def test_prompt_and_answer_ids_spell_the_addition(a, b, scheme):
    text = decode_ids(prompt_ids(a, b, scheme) + answer_ids(a, b, scheme)).split("|")
    assert text[0] == "<bos>" and text[-1] == "<eos>"
    assert "".join(text[1:-1]) == f"{a}+{b}={a + b}"


def test_examples_and_errors():
    assert chunk("12345", "l2r3") == ["123", "45"] and chunk("12345", "r2l3") == ["12", "345"]
    assert chunk("1000", "r2l3") == ["1", "000"] and chunk(1000, "l2r3") == ["100", "0"]
    assert len(VOCAB) == 1115 and len({TOKEN_ID["7"], TOKEN_ID["07"], TOKEN_ID["007"]}) == 3
    with pytest.raises(TokenlabError, match="string of digits"): chunk("1_000", "digits")
    with pytest.raises(TokenlabError, match="valid number schemes"): chunk("1", "r2l")
    with pytest.raises(TokenlabError, match="operand_digits"): AdditionTask("digits", (5, 3))
    with pytest.raises(TokenlabError, match="too large"): AdditionTask("digits", (1, 1), n_eval=100)


def test_labels_mask_the_prompt_and_padding():
    task = AdditionTask("r2l3", (1, 7), batch_size=40, n_eval=30, seed=3)
    pairs = task.sample(torch.Generator().manual_seed(0), 40)
    ids, labels = task.batch(pairs)
    for i, (a, b) in enumerate(pairs):
        p, q = prompt_ids(a, b, "r2l3"), answer_ids(a, b, "r2l3")
        assert ids[i, :len(p) + len(q)].tolist() == p + q and (ids[i, len(p) + len(q):] == PAD).all()
        assert (labels[i, :len(p)] == -100).all() and labels[i, len(p):len(p) + len(q)].tolist() == q
        assert (labels[i, len(p) + len(q):] == -100).all()
    assert (labels != -100).sum() == sum(len(answer_ids(a, b, "r2l3")) for a, b in pairs)


def test_same_additions_for_every_scheme_and_held_out_never_trained():
    tasks = [AdditionTask(s, (4, 6), batch_size=64, n_eval=200, seed=7) for s in SCHEMES]
    assert tasks[0].eval_pairs == tasks[1].eval_pairs == tasks[2].eval_pairs
    assert tasks[0].eval_pairs != AdditionTask("digits", (4, 6), n_eval=200, seed=8).eval_pairs
    draws = [t.sample(torch.Generator().manual_seed(1), 2000) for t in tasks]
    assert draws[0] == draws[1] == draws[2]
    assert all(4 <= len(str(x)) <= 6 for p in draws[0] for x in p)
    small = AdditionTask("digits", (1, 1), n_eval=40, seed=0)       # 81 pairs: held-out ones must be skipped
    trained = set(small.sample(torch.Generator().manual_seed(0), 3000))
    assert not trained & set(small.eval_pairs) and len(trained) == 81 - 40


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_perfect_oracle_gets_accuracy_1_and_a_wrong_one_0(scheme):
    task = AdditionTask(scheme, (1, 9), n_eval=400, seed=1)
    assert accuracy(OracleLM(scheme), task) == 1.0
    pr = predictions(OracleLM(scheme, corrupt=lambda a, b: a + b + 10), task)
    assert not pr.correct.any() and (pr.pred.astype(int) == pr.a + pr.b + 10).all()


def test_greedy_decode_stops_at_eos_and_scores_unterminated_answers_wrong():
    task = AdditionTask("l2r3", (4, 6), n_eval=50, seed=0)
    gens = greedy_decode(OracleLM("l2r3"), [prompt_ids(a, b, "l2r3") for a, b in task.eval_pairs], max_new=6)
    assert all(g[-1] == EOS and g[:-1] == answer_ids(a, b, "l2r3")[:-1] for g, (a, b) in zip(gens, task.eval_pairs))

    class NeverStops(OracleLM):
        def forward(self, input_ids, **kw):
            out = super().forward(input_ids)
            out.logits[:, -1] = -1e4; out.logits[:, -1, TOKEN_ID["5"]] = 0.0
            return out
    pr = predictions(NeverStops("l2r3"), task)
    assert not pr.correct.any() and (pr.pred.str.len() == len(chunk("1000000", "l2r3")) + 1).all()


def test_error_positions_find_a_planted_boundary_error():
    # the oracle is wrong at the 4th answer digit whenever the answer is longer than the operands
    def corrupt(a, b):
        s, n = str(a + b), max(len(str(a)), len(str(b)))
        return int(s[:3] + str((int(s[3]) + 1) % 10) + s[4:]) if len(s) > n else a + b
    task = AdditionTask("l2r3", (4, 6), n_eval=600, seed=2)
    pr = predictions(OracleLM("l2r3", corrupt=corrupt), task)
    assert pr.longer.any() and (pr.correct == ~pr.longer).all()
    ep = error_positions(pr.assign(scheme="l2r3"), by=["scheme"])
    longer = ep[ep.longer].groupby("position").error_rate.mean()
    assert longer[4] == 1.0 and longer.drop(4).max() == 0.0
    assert ep[~ep.longer].errors.sum() == 0 and (ep.length_errors == 0).all()
    assert set(ep.columns) >= {"scheme", "longer", "answer_len", "position", "n", "errors", "error_rate"}
