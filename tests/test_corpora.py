"""tokenlab.lab.corpora on the real fetched assets (run `tokenlab fetch --tier core` first)."""
from __future__ import annotations
import pytest
from tokenlab.lab.core import TokenlabError
from tokenlab.lab.corpora import UDHR_ENGLISH, english_corpus, udhr_articles, udhr_languages


def test_english_article_1():
    arts = udhr_articles(UDHR_ENGLISH)
    assert sorted(arts) == list(range(1, 31))
    assert arts[1].startswith("All human beings are born free and equal in dignity and rights.")
    assert "Article" not in arts[1] and "  " not in arts[1]


def test_language_table():
    full, complete = udhr_languages(complete_only=False), udhr_languages()
    assert len(full) == 532 and len(complete) == 521 and complete.complete.all()
    assert {"code", "name", "script", "iso639_3", "bcp47", "n_articles", "complete"} <= set(full.columns)
    assert full.code.is_unique and (complete.n_articles == 30).all()
    eng = full.set_index("code").loc[UDHR_ENGLISH]
    assert eng["name"] == "English" and eng["script"] == "Latin" and eng["iso639_3"] == "eng"
    scripts = set(complete.script)
    assert {"Latin", "Cyrillic", "Arabic", "Han", "Devanagari", "Greek", "Hebrew"} <= scripts
    complete.loc[0, "name"] = "changed"; assert udhr_languages().loc[0, "name"] != "changed"   # a copy, not the cache


def test_every_complete_version_has_30_articles():
    for code in udhr_languages().code:
        arts = udhr_articles(code)
        assert sorted(arts) == list(range(1, 31)) and all(t.strip() for t in arts.values()), code


def test_unknown_language_is_one_line():
    with pytest.raises(TokenlabError, match=r"unknown UDHR language 'klingon'; valid: 532 codes such as") as e:
        udhr_articles("klingon")
    assert "\n" not in str(e.value)


def test_english_corpus():
    text = english_corpus()
    assert len(text.encode()) > 10_000_000 and "Call me Ishmael" in text and "Fellow-Citizens" in text
    cut = english_corpus(limit_bytes=1000)
    assert len(cut.encode()) <= 1000 and text.startswith(cut)


def test_udhr_sample_is_script_diverse_and_deterministic():
    from tokenlab.lab.corpora import udhr_sample, udhr_languages, UDHR_ENGLISH
    s = udhr_sample(12)
    others = s[s.code != UDHR_ENGLISH]
    assert len(s) == 12 and UDHR_ENGLISH in set(s.code) and others.script.nunique() == 11   # one per script besides English
    assert s.equals(udhr_sample(12)) and list(s.code) == sorted(s.code)
    assert len(udhr_sample("all")) == len(udhr_languages())
