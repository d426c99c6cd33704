"""Byte-level BPE over any script, the fast word-cached encoder, and id captions."""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from pc2.models import tokenizer as tk

ZH = ["一只猫", "坐在", "红色的", "沙发上", "公园里", "女人", "读书", "旧房子"]
JA = ["電車の", "中で", "本を", "読む", "女性が", "公園を", "走る", "犬", "テレビを", "コーヒーの"]
RU = ["кошка", "сидит", "на", "красном", "диване", "собака", "бежит", "парку"]
EN = ["a", "cat", "sits", "on", "the", "red", "sofa", "dog", "runs", "park"]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words, sep = [(ZH, ""), (JA, ""), (RU, " "), (EN, " ")][i % 4]
        out.append(sep.join(words[j] for j in rng.integers(0, len(words), rng.integers(3, 8))))
    out += ["红色的沙发 red sofa красный", "電車 train поезд", "🐕 emoji dog", "  spaced  out  "]
    return out


def script_of(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    for key, script in (("CJK UNIFIED", "han"), ("HIRAGANA", "kana"), ("KATAKANA", "kana"), ("CYRILLIC", "cyrillic"), ("LATIN", "latin")):
        if name.startswith(key):
            return script
    return None


@pytest.fixture(scope="module")
def trained():
    caps = corpus()
    return caps, tk.train_bpe(caps, 700)


def test_special_tokens_and_vocab_size(trained):
    _, tok = trained
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[UNK]") == 1
    assert tk.vocab_size(tok) <= 700 + 2
    with pytest.raises(ValueError, match="at least 258"):
        tk.train_bpe(["a"], 100)


def test_vocabulary_merges_kana_cyrillic_latin_and_keeps_ideographs_whole(trained):
    _, tok = trained
    multi = {s: 0 for s in ("han", "kana", "cyrillic", "latin")}
    for i in range(tk.vocab_size(tok)):
        text = tok.decode([i])
        scripts = [script_of(c) for c in text if script_of(c)]
        if len(scripts) >= 2:  # a merged token of whole characters
            for s in set(scripts):
                multi[s] += 1
    assert multi["han"] == 0, multi  # an ideograph is never glued to its neighbours
    assert all(multi[s] >= 3 for s in ("kana", "cyrillic", "latin")), multi


def test_ideographs_get_the_same_ids_in_every_context(trained):
    _, tok = trained
    alone = tok.encode("沙发").ids
    assert [tok.decode([i]) for i in alone] == ["沙", "发"]  # whole characters, no stray bytes
    for text in ("沙发上", "红色的沙发", "女人坐在沙发上读书"):
        ids = tok.encode(text).ids
        assert any(ids[j : j + 2] == alone for j in range(len(ids))), (text, [tok.decode([i]) for i in ids])
    # a katakana or hiragana run is one pre-token, so a frequent kana word becomes one token
    assert [tok.decode([i]) for i in tok.encode("本を").ids] == ["本", "を"]


def test_round_trip_decode_every_script(trained):
    caps, tok = trained
    offsets, ids = tk.encode(tok, caps)
    assert 0 not in set(ids.tolist()) and 1 not in set(ids.tolist())  # never PAD, never UNK
    back = tk.decode_batch(tok, offsets, ids)
    assert back == caps


def test_fast_encoder_matches_plain_encode(trained):
    _, tok = trained
    tricky = ["  lead", "trail  ", "a  b\tc\nd", "x", "红色的 沙发", "кошка,собака", " ", "", "сидит  на"]
    offsets, ids = tk.encode(tok, tricky + corpus(40, seed=3))
    for i, text in enumerate(tricky + corpus(40, seed=3)):
        want = tok.encode(text, add_special_tokens=False).ids if text.strip() else []
        assert ids[offsets[i] : offsets[i + 1]].tolist() == want, text


def test_generic_tokenizer_path(trained):
    caps, _ = trained
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "cat": 2, "dog": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    offsets, ids = tk.encode(tok, pa.array(["cat dog", "", "dog  bird", "cat dog"]))
    assert offsets.tolist() == [0, 2, 2, 4, 6] and ids.tolist() == [2, 3, 3, 1, 2, 3]


def test_blank_captions_have_no_ids(trained):
    _, tok = trained
    offsets, _ = tk.encode(tok, ["a cat", "", "   ", "\t\n", None])
    assert np.diff(offsets).tolist()[1:] == [0, 0, 0, 0] and offsets[1] > 0


def test_save_is_atomic_and_loads_identically(tmp_path, trained):
    caps, tok = trained
    tk.save(tok, tmp_path / "tokenizer.json")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    again = tk.load(tmp_path / "tokenizer.json")
    a, b = tk.encode(tok, caps), tk.encode(again, caps)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_parse_ids():
    offsets, ids, bad = tk.parse_ids(["1,2, 3", " 4 5 ", "", "x,3", None, "7,"])
    assert offsets.tolist() == [0, 3, 5, 5, 6, 6, 7] and ids.tolist() == [1, 2, 3, 4, 5, 3, 7]
    assert bad.tolist() == [3]


def test_ids_and_vocab_tokenizers():
    tok = tk.ids_tokenizer(10)
    assert tok.encode("1,2 3").ids == [1, 2, 3] and tk.decode(tok, [0, 4, 5]) == "4 5"
    vt = tk.vocab_tokenizer({"<pad>": 0, "a": 1, ",": 2, "dog": 3})
    assert vt.encode("a , dog").ids == [1, 2, 3] and tk.decode(vt, [1, 2, 3]) == "a , dog"


def test_punctuation_is_split_from_words():
    # "sofa." ends half the captions: without the split BPE learns it as a word of its own
    caps = ["the red sofa.", "a cat on the sofa.", "the red sofa", "a dog on a sofa", "沙发。", "沙发"] * 40
    tok = tk.train_bpe(caps, 300)
    bare = tok.encode("the red sofa").ids
    for mark in (".", "。"):
        ids = tok.encode("the red sofa" + mark).ids
        assert ids[: len(bare)] == bare, mark  # "sofa." ends in the same token as "sofa"
        assert tok.decode(ids[len(bare) :]) == mark
    assert tok.encode("沙发。").ids[:2] == tok.encode("沙发").ids
    offsets, ids = tk.encode(tok, ["the red sofa.", "the red sofa"])
    assert ids[offsets[0] : offsets[1]].tolist()[:-1] == ids[offsets[1] : offsets[2]].tolist()
