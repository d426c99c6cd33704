"""Caption tokenizers: byte-level BPE trained on the corpus itself, or ids the user already has.

Byte-level BPE needs no language-specific segmenter: every UTF-8 byte is in the base alphabet, so any
script (Chinese and Japanese without spaces, Cyrillic, Latin, emoji) encodes without ``[UNK]`` and decodes
back exactly. Pre-tokens are the text between spaces, each space kept at the front of the word after it
(" sofa"). Inside a word, every CJK ideograph is a pre-token of its own (as in BERT's multilingual
tokenizer) and so is every run of hiragana or of katakana. Byte-level merges over an unspaced run of
CJK text would otherwise cross character boundaries ("的" glued to the first byte of the next word),
so the same word would get different ids in different captions and a caption would become a few
rare, memorisable tokens. Measured on a 50 %-noise corpus: mismatched Chinese and Japanese pairs
were 3x more often memorised into the trusted split than Latin or Cyrillic ones, and this split
raised detection ROC-AUC from 0.926 to 0.943 (BENCHMARKS.md). Punctuation is split off words too
("sofa." is "sofa" and "."), so the last word of a sentence is the same token as anywhere else
(0.943 -> 0.951).

Splitting on the space character alone (not the GPT-2 regex) is deliberate: pyarrow can reproduce the
split exactly, so ``encode`` tokenizes each distinct word once and gathers ids with numpy, several times
faster than encoding caption by caption on web corpora where a few thousand words make up most text.

Id 0 is ``[PAD]`` and is never produced for real text: the engine pads batches with 0.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, UNK = "[PAD]", "[UNK]"
MIN_VOCAB = 256 + 2  # the byte alphabet plus the two special tokens
MAX_TOKEN_CHARS = 16  # in byte-level symbols: ~16 Latin letters
# Each CJK ideograph (extension A, unified, compatibility) is a pre-token; so is each run of hiragana
# and each run of katakana (script changes are where Japanese words mostly begin and end).
CJK_PIECES = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[\u3040-\u309f]+|[\u30a0-\u30ff]+"


def train_bpe(texts: Iterable[str], vocab_size: int = 10_000, *, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (any iterable, consumed once) with ``[PAD]``=0, ``[UNK]``=1."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + [PAD] + [UNK]), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, UNK],  # order fixes their ids: PAD=0, UNK=1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_CHARS,
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    assert tok.token_to_id(PAD) == 0
    return tok


def _pre_tokenizer():
    # add_prefix_space=False keeps decode(encode(x)) == x for every string.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(CJK_PIECES), behavior="isolated"),  # within a space-delimited word
            pre_tokenizers.Punctuation(behavior="isolated"),  # "sofa." is "sofa" and "."
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


_WORD_SPLIT_STATE = None


def _splits_on_spaces(tok: Tokenizer) -> bool:
    """True when ``tok`` pre-tokenizes exactly like ``train_bpe`` tokenizers (so words can be cached)."""
    global _WORD_SPLIT_STATE
    if _WORD_SPLIT_STATE is None:
        probe = Tokenizer(models.BPE())
        probe.pre_tokenizer = _pre_tokenizer()
        _WORD_SPLIT_STATE = json.loads(probe.to_str())["pre_tokenizer"]
    if tok.normalizer is not None or tok.pre_tokenizer is None:
        return False
    return json.loads(tok.to_str())["pre_tokenizer"] == _WORD_SPLIT_STATE and type(tok.model).__name__ == "BPE"


def _batched(texts: Iterable[str], size: int = 8192) -> Iterator[list[str]]:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
        for c in chunks:
            for s in range(0, len(c), size):
                yield [t for t in c.slice(s, size).to_pylist() if t]
        return
    buf: list[str] = []
    for t in texts:
        if t:
            buf.append(t)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def ids_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer for captions that already are ids: token ``"17"`` is id 17 (id 0 stays ``[PAD]``)."""
    vocab = {str(i): i for i in range(1, vocab_size)}
    vocab[PAD] = 0
    vocab[UNK] = vocab_size
    return _word_level(vocab, UNK, split_commas=True)


def vocab_tokenizer(word2idx: Mapping[str, int]) -> Tokenizer:
    """A word-level tokenizer over an existing vocabulary (e.g. NCR's ``vocab.json``), ids unchanged."""
    vocab = {str(w): int(i) for w, i in word2idx.items()}
    unk = next((u for u in ("<unk>", "[UNK]", "<UNK>", "UNK") if u in vocab), None)
    if unk is None:
        unk = UNK
        vocab[UNK] = max(vocab.values(), default=0) + 1
    return _word_level(vocab, unk, split_commas=False)


def _word_level(vocab: dict[str, int], unk: str, *, split_commas: bool) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    # A vocabulary may hold "," as a word, so only id captions treat commas as separators.
    splits = [pre_tokenizers.WhitespaceSplit()] + ([pre_tokenizers.CharDelimiterSplit(",")] if split_commas else [])
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.decoder = None
    return tok


def load(path: str | os.PathLike) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def save(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write ``tok`` as ``tokenizer.json`` atomically: a reader sees the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tok.to_str())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vocab_size(tok: Tokenizer) -> int:
    """Embedding rows the engine needs: one past the largest id (added tokens included)."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def encode(tok: Tokenizer, texts: Sequence[str] | pa.Array | pa.ChunkedArray, *, batch: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> ``(offsets (N+1,) int64, ids (T,) int32)``; blank texts get no ids at all.

    Blank (empty or whitespace-only) captions mean "no usable text" to the engine, which it reads as a
    zero length, so they are not fed to the tokenizer. Gives the same ids as ``tok.encode`` per text.
    """
    arr = _as_string_array(texts)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""), True)
    arr = pc.if_else(blank, pa.scalar("", pa.string()), arr)
    if _splits_on_spaces(tok):
        return _encode_by_words(tok, arr, batch)
    # Any other tokenizer: encode each distinct caption once (web corpora repeat boilerplate a lot).
    enc = pc.dictionary_encode(arr)
    u_off, u_ids = _encode_unique(tok, enc.dictionary, batch)
    return _gather(u_off, u_ids, np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64), None, len(arr))


def _encode_unique(tok: Tokenizer, uniq: pa.Array, batch: int) -> tuple[np.ndarray, np.ndarray]:
    encode_fn = getattr(tok, "encode_batch_fast", tok.encode_batch)  # skips char offsets we never use
    lens_parts, id_parts = [], []
    for s in range(0, len(uniq), batch):
        ids = [e.ids for e in encode_fn(uniq.slice(s, batch).to_pylist(), add_special_tokens=False)]
        lens_parts.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
        id_parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32))
    lens = np.concatenate(lens_parts) if lens_parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return offsets, (np.concatenate(id_parts) if id_parts else np.zeros(0, np.int32))


def _gather(u_off: np.ndarray, u_ids: np.ndarray, codes: np.ndarray, parent: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the id runs of ``codes`` (one per piece) and group pieces by ``parent`` text."""
    piece_len = (u_off[1:] - u_off[:-1])[codes]
    total = int(piece_len.sum())
    piece_start = np.zeros(len(codes), dtype=np.int64)
    np.cumsum(piece_len[:-1], out=piece_start[1:]) if len(codes) > 1 else None
    src = np.repeat(u_off[:-1][codes] - piece_start, piece_len) + np.arange(total, dtype=np.int64)
    ids = u_ids[src].astype(np.int32, copy=False)
    lens = piece_len if parent is None else np.bincount(parent, weights=piece_len, minlength=n).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return offsets, ids


def _encode_by_words(tok: Tokenizer, arr: pa.Array, batch: int) -> tuple[np.ndarray, np.ndarray]:
    # Same pieces as Split(" ", merged_with_next): the first piece bare, every later one with its space.
    pieces = pc.split_pattern(arr, " ")
    flat = pc.list_flatten(pieces)
    parent = np.asarray(pc.list_parent_indices(pieces).to_numpy(zero_copy_only=False), dtype=np.int64)
    starts = np.asarray(pieces.offsets.to_numpy(), dtype=np.int64)[:-1]
    first = np.zeros(len(flat), dtype=bool)
    first[starts[starts < len(flat)]] = True
    spaced = pc.binary_join_element_wise(pa.scalar(" "), flat, "")
    words = pc.if_else(pa.array(first), flat, spaced)
    keep = pc.not_equal(words, "")  # only an empty first piece (text starting with a space) is dropped
    words = words.filter(keep)
    parent = parent[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)]
    enc = pc.dictionary_encode(words)
    u_off, u_ids = _encode_unique(tok, enc.dictionary, batch)
    return _gather(u_off, u_ids, np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64), parent, len(arr))


def parse_ids(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Captions of comma/space-separated ints -> ``(offsets, ids, bad_rows)`` without a Python loop.

    ``bad_rows`` lists captions holding something that is not a non-negative integer.
    """
    arr = _as_string_array(texts)
    arr = pc.fill_null(arr, "")
    parts = pc.split_pattern_regex(pc.utf8_trim(arr, characters=" \t\r\n,"), r"[\s,]+")
    flat = pc.list_flatten(parts)
    parent = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False)
    nonempty = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    flat, parent = flat.filter(pa.array(nonempty)), parent[nonempty]
    is_int = pc.match_substring_regex(flat, r"^[0-9]{1,9}$").to_numpy(zero_copy_only=False)
    bad = np.unique(parent[~is_int])
    ids = pc.cast(flat.filter(pa.array(is_int)), pa.int64()).to_numpy().astype(np.int32)
    lens = np.bincount(parent[is_int], minlength=len(arr)).astype(np.int64)
    offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return offsets, ids, bad


def decode(tok: Tokenizer, ids: Sequence[int] | np.ndarray) -> str:
    ids = [int(i) for i in ids if int(i) != 0]
    if tok.decoder is None:  # word-level vocabularies: words joined by spaces
        return " ".join(tok.id_to_token(i) or UNK for i in ids)
    return tok.decode(ids, skip_special_tokens=False)


def decode_batch(tok: Tokenizer, offsets: np.ndarray, ids: np.ndarray) -> list[str]:
    return [decode(tok, ids[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]


def _as_string_array(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.string())
    if texts.type != pa.string():
        texts = texts.cast(pa.string())
    return texts
