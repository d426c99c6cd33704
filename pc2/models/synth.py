"""Synthetic web-like image–text corpora whose correspondence truth is known.

The world has latent *concepts* (each with a prototype direction in feature space) grouped into
*scenes* (pools of concepts that co-occur). An image is a scene plus 2–4 concepts; its region
features are concept prototypes, attribute directions and background clutter under noise, passed
through a ReLU so they look like detector outputs. Captions are written in synthetic multilingual
lexicons (each language in its own script) and mention most of the image's concepts. A chosen
fraction of training pairs is then corrupted the way web crawls are: another image's caption, site
boilerplate, partial matches, or no text at all.

Everything is drawn from one seed, so the same call writes the same bytes. Features are written in
windows through a memory map that is reopened every window, so the process never keeps more than
one window of the (possibly multi-GB) feature file resident.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LANGUAGES = ("en", "zh", "ja", "ru", "de", "es")
NOISE_TYPES = ("clean", "shuffled", "boilerplate", "partial", "empty")
# Share of each noise type among the noisy pairs.
NOISE_MIX = {"shuffled": 0.55, "boilerplate": 0.20, "partial": 0.20, "empty": 0.05}

_MAX_CONCEPTS = 4  # concepts per image are drawn from 2..4
_IMAGE_CHUNK = 256  # images per feature chunk; fixed so output does not depend on memory settings
_WINDOW_BYTES = 128 << 20  # reopen the memory map after this many bytes to release resident pages


class SynthError(ValueError):
    """A generation parameter that cannot be used; names the parameter and what it must be."""

    def __init__(self, param: str, message: str):
        super().__init__(f"synth parameter '{param}': {message}")
        self.param = param
        self.message = message


@dataclass
class SynthInfo:
    """What ``generate`` wrote and how the noise came out."""

    out_dir: Path
    n_pairs: int
    n_images: int
    n_test: int
    n_noisy: int
    noise_counts: dict[str, int]
    params: dict
    seconds: float = 0.0
    files: dict[str, int] = field(default_factory=dict)  # relative path -> size in bytes

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / "manifest.parquet"

    @property
    def features_path(self) -> Path:
        return self.out_dir / "features.npy"

    @property
    def truth_path(self) -> Path:
        return self.out_dir / "truth.parquet"

    @property
    def test_dir(self) -> Path:
        return self.out_dir / "test"


def describes(image_concepts: Iterable[int], caption_concepts: Iterable[int]) -> bool:
    """True iff the caption mentions at least one concept and at least half of them are in the image."""
    img = set(int(c) for c in image_concepts)
    cap = set(int(c) for c in caption_concepts)
    if not cap:
        return False
    return 2 * len(cap & img) >= len(cap)


def load_truth(out_dir: str | os.PathLike, split: str = "train") -> pa.Table:
    """Ground-truth table of a generated corpus (``split="test"`` for the clean test split)."""
    d = Path(out_dir)
    if split == "test":
        d = d / "test"
    elif split != "train":
        raise SynthError("split", f"must be 'train' or 'test', got {split!r}")
    path = d / "truth.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run synth.generate into {out_dir} first")
    return pq.read_table(path)


# --------------------------------------------------------------------------------------------------
# Lexicons: each language gets its own invented vocabulary in its own script.
# --------------------------------------------------------------------------------------------------

# Latin and Cyrillic languages build words from syllables; the inventories differ so the languages
# do not share surface forms.
_SYLLABLES = {
    "en": (
        ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y",
         "bl", "br", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sh", "sk", "sl", "sn", "sp",
         "st", "str", "th", "tr", "wh"],
        ["a", "e", "i", "o", "u", "ee", "oo", "ea", "ai", "ou", "y"],
        ["", "", "", "n", "t", "s", "r", "l", "m", "nd", "st", "ng", "ck", "p", "x"],
    ),
    "de": (
        ["", "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "w", "z", "sch", "schw",
         "st", "sp", "pf", "kr", "gr", "br", "fr", "tr", "kl", "bl", "fl", "gl", "zw"],
        ["a", "e", "i", "o", "u", "ä", "ö", "ü", "ei", "au", "eu", "ie"],
        ["", "", "n", "r", "t", "ch", "sch", "ß", "nd", "ng", "tz", "lk", "rn", "st", "ck"],
    ),
    "es": (
        ["", "b", "c", "d", "f", "g", "j", "l", "ll", "m", "n", "ñ", "p", "qu", "r", "s", "t", "v",
         "z", "ch", "br", "cr", "pl", "tr", "gu"],
        ["a", "e", "i", "o", "u", "á", "é", "í", "ó", "ú", "ia", "ue", "io"],
        ["", "", "", "", "n", "s", "r", "l", "z"],
    ),
    "ru": (
        ["", "б", "в", "г", "д", "ж", "з", "к", "л", "м", "н", "п", "р", "с", "т", "ф", "х", "ц", "ч",
         "ш", "щ", "ст", "пр", "кр", "бр", "гр", "тр", "св", "зв"],
        ["а", "е", "и", "о", "у", "ы", "э", "ю", "я", "ё"],
        ["", "", "й", "н", "к", "т", "р", "л", "ск", "ть", "ль", "ш", "м"],
    ),
}

_CJK = (0x4E00, 0x9FA5)  # CJK unified ideographs (the commonly encoded block)
_HIRAGANA = (0x3041, 0x3093)
_KATAKANA = (0x30A1, 0x30F3)
_CHOONPU = "\u30fc"  # katakana long-vowel mark


@dataclass
class _Lexicon:
    concepts: list[list[str]]  # 1–2 surface forms per concept
    attributes: list[str]  # one word per attribute (colour-like modifiers)
    fillers: list[str]  # words that carry no concept
    connectors: list[str]  # words placed between mentions
    boilerplate: list[str]  # site phrases ("free shipping", "click here", ...)
    joiner: str  # " " for spaced scripts, "" for zh/ja
    bp_sep: str  # separator between boilerplate phrases
    end: list[str]  # sentence-final marks (may be empty string)
    attr_link: str  # between an attribute and its noun


def _syllable_word(rnd: random.Random, inv, n_syll: int) -> str:
    onsets, vowels, codas = inv
    return "".join(rnd.choice(onsets) + rnd.choice(vowels) + rnd.choice(codas) for _ in range(n_syll))


def _chars(rnd: random.Random, lo_hi: tuple[int, int], n: int) -> str:
    return "".join(chr(rnd.randint(*lo_hi)) for _ in range(n))


def _word_maker(lang: str, rnd: random.Random) -> Callable[[str], str]:
    """Return make(kind) -> a fresh candidate word of ``kind`` (concept|attr|filler|site)."""
    if lang in _SYLLABLES:
        inv = _SYLLABLES[lang]

        def make(kind: str) -> str:
            n = {"concept": rnd.choice((2, 2, 3)), "attr": rnd.choice((1, 2)),
                 "filler": 1, "site": rnd.choice((1, 2))}[kind]
            w = _syllable_word(rnd, inv, n)
            if kind == "filler":
                w = w[:3] or w
            if lang == "de" and kind == "concept":
                w = w[:1].upper() + w[1:]  # German capitalises nouns
            if lang == "es" and kind == "concept":
                w = w + rnd.choice(("o", "a", "ón", "ez"))
            return w

        return make
    if lang == "zh":

        def make(kind: str) -> str:
            n = {"concept": rnd.choice((1, 2, 2, 2, 3)), "attr": 1, "filler": 1, "site": rnd.choice((2, 3, 4))}[kind]
            return _chars(rnd, _CJK, n)

        return make
    if lang == "ja":

        def make(kind: str) -> str:
            if kind == "filler":
                return _chars(rnd, _HIRAGANA, rnd.choice((1, 1, 2)))
            if kind == "attr":
                return _chars(rnd, _CJK, 1) + _chars(rnd, _HIRAGANA, 1)
            if kind == "site":
                return _chars(rnd, _KATAKANA, rnd.choice((2, 3))) + _chars(rnd, _CJK, rnd.choice((1, 2)))
            # Concepts: loanwords in katakana, native words in kanji, some kanji + okurigana.
            r = rnd.random()
            if r < 0.4:
                w = _chars(rnd, _KATAKANA, rnd.choice((2, 3, 4)))
                return w[:2] + _CHOONPU + w[2:] if rnd.random() < 0.3 else w
            if r < 0.8:
                return _chars(rnd, _CJK, rnd.choice((1, 2)))
            return _chars(rnd, _CJK, 1) + _chars(rnd, _HIRAGANA, rnd.choice((1, 2)))

        return make
    raise SynthError("languages", f"unsupported language {lang!r}; choose from {list(LANGUAGES)}")


def _build_lexicon(lang: str, n_concepts: int, n_attributes: int, rnd: random.Random) -> _Lexicon:
    make = _word_maker(lang, rnd)
    used: set[str] = set()

    def fresh(kind: str) -> str:
        for _ in range(10_000):
            w = make(kind)
            if w and w not in used:
                used.add(w)
                return w
        raise RuntimeError(f"lexicon for {lang!r} ran out of distinct {kind} words")

    # Fillers first: short words are the scarcest and must not collide with concept words.
    fillers = [fresh("filler") for _ in range(24)]
    connectors = [fresh("filler") for _ in range(8)]
    concepts = [[fresh("concept") for _ in range(1 if rnd.random() < 0.5 else 2)] for _ in range(n_concepts)]
    attributes = [fresh("attr") for _ in range(n_attributes)]
    site = [fresh("site") for _ in range(30)]
    boilerplate = [" ".join(rnd.sample(site, rnd.choice((1, 2, 3)))) for _ in range(20)]
    if lang in ("zh", "ja"):
        boilerplate = [p.replace(" ", "") for p in boilerplate]
        end = ["。", "", "！"]
        return _Lexicon(concepts, attributes, fillers, connectors, boilerplate, "", "｜", end,
                        "的" if lang == "zh" else "の")
    return _Lexicon(concepts, attributes, fillers, connectors, boilerplate, " ", " | ", [".", "", ""], " ")


# --------------------------------------------------------------------------------------------------
# The world: prototypes, scenes, lexicons.
# --------------------------------------------------------------------------------------------------


@dataclass
class _World:
    protos: np.ndarray  # (C, D) concept prototypes
    attrs: np.ndarray  # (A, D) attribute directions
    background: np.ndarray  # (G, D) generic clutter prototypes
    pools: list[list[int]]  # scene -> concepts that co-occur
    scene_p: np.ndarray  # (S,) scene frequencies
    lexicons: dict[str, _Lexicon]
    lang_p: np.ndarray  # (L,) language frequencies
    languages: tuple[str, ...]


_N_ATTRIBUTES = 10
_N_BACKGROUND = 24


def _build_world(rng: np.random.Generator, rnd: random.Random, *, n_concepts: int, n_scenes: int, dim: int,
                 languages: Sequence[str]) -> _World:
    # Concepts come in families sharing a parent direction, so siblings look alike (dog vs. cat).
    n_families = max(1, n_concepts // 10)
    family = rng.integers(0, n_families, size=n_concepts)
    parents = rng.standard_normal((n_families, dim), dtype=np.float32)
    own = rng.standard_normal((n_concepts, dim), dtype=np.float32)
    protos = 0.55 * parents[family] + 0.85 * own
    protos /= np.sqrt((protos**2).mean(axis=1, keepdims=True))  # unit variance per entry
    attrs = 0.5 * rng.standard_normal((_N_ATTRIBUTES, dim), dtype=np.float32)
    background = 0.8 * rng.standard_normal((_N_BACKGROUND, dim), dtype=np.float32)
    pools = []
    for _ in range(n_scenes):
        size = min(n_concepts, int(rng.integers(8, 13)))
        pools.append(sorted(int(c) for c in rng.choice(n_concepts, size=size, replace=False)))
    # Mildly skewed scene frequencies, as on the web (many product shots, few rare scenes).
    scene_p = 1.0 / (np.arange(n_scenes) + 5.0)
    scene_p = rng.permutation(scene_p / scene_p.sum())
    lexicons = {lang: _build_lexicon(lang, n_concepts, _N_ATTRIBUTES, rnd) for lang in languages}
    # English is the most common language of web alt-text; the rest share the remainder.
    lang_p = np.array([2.0 if lang == "en" else 1.0 for lang in languages])
    return _World(protos, attrs, background, pools, scene_p, lexicons, lang_p / lang_p.sum(), tuple(languages))


@dataclass
class _Images:
    scene: np.ndarray  # (n,) int32
    concepts: np.ndarray  # (n, 4) int32, -1 padded
    k: np.ndarray  # (n,) int32 number of concepts
    attrs: np.ndarray  # (n, 4) int32 attribute of each concept instance

    def concept_list(self, i: int) -> list[int]:
        return [int(c) for c in self.concepts[i, : self.k[i]]]


def _draw_images(n: int, world: _World, rnd: random.Random) -> _Images:
    n_concepts = len(world.protos)
    scenes = rnd.choices(range(len(world.pools)), weights=world.scene_p.tolist(), k=n)
    concepts = np.full((n, _MAX_CONCEPTS), -1, dtype=np.int32)
    ks = np.empty(n, dtype=np.int32)
    attrs = np.empty((n, _MAX_CONCEPTS), dtype=np.int32)
    for i, s in enumerate(scenes):
        pool = world.pools[s]
        k = rnd.choice((2, 3, 3, 4))
        picks: list[int] = []
        while len(picks) < k:
            # Mostly the scene's own concepts; sometimes anything (a stray object in the frame).
            c = rnd.choice(pool) if rnd.random() < 0.85 else rnd.randrange(n_concepts)
            if c not in picks:
                picks.append(c)
        concepts[i, :k] = picks
        ks[i] = k
        attrs[i] = [rnd.randrange(_N_ATTRIBUTES) for _ in range(_MAX_CONCEPTS)]
    return _Images(np.asarray(scenes, dtype=np.int32), concepts, ks, attrs)


# --------------------------------------------------------------------------------------------------
# Region features.
# --------------------------------------------------------------------------------------------------


def _feature_chunk(world: _World, imgs: _Images, lo: int, hi: int, regions: int, noise: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Region features ``(hi-lo, R, D)`` float32 for images lo..hi."""
    conc, k, attrs = imgs.concepts[lo:hi], imgs.k[lo:hi].astype(np.int64), imgs.attrs[lo:hi]
    b, d = hi - lo, world.protos.shape[1]
    slot = np.arange(regions)[None, :]
    if regions >= _MAX_CONCEPTS:
        # A detector proposes several boxes per object: each concept gets at least one region, a
        # quarter to half of all regions show objects, the rest are background clutter.
        lo_m = np.maximum(k, regions // 4)
        hi_m = np.maximum(lo_m, regions // 2)
        m = rng.integers(lo_m, hi_m + 1)
        is_obj = slot < m[:, None]
        which = np.where(slot < k[:, None], slot, (rng.random((b, regions)) * k[:, None]).astype(np.int64))
        which = np.minimum(which, _MAX_CONCEPTS - 1)
        perm = np.argsort(rng.random((b, regions)), axis=1)  # detectors do not list objects first
        is_obj = np.take_along_axis(is_obj, perm, 1)
        which = np.take_along_axis(which, perm, 1)
        cidx = np.take_along_axis(conc, which, 1)
        aidx = np.take_along_axis(attrs, which, 1)
        scale = (rng.uniform(0.6, 1.4, (b, regions)) * is_obj).astype(np.float32)
        x = world.protos[np.where(is_obj, cidx, 0)]
        x *= scale[..., None]
        x += (0.8 * scale)[..., None] * world.attrs[aidx]
        bg_w = np.where(is_obj, 0.3, 1.0).astype(np.float32)
    else:
        # Global-embedding mode (R < 4): every region is the sum of all the image's concepts.
        x = np.zeros((b, regions, d), dtype=np.float32)
        for j in range(_MAX_CONCEPTS):
            present = (j < k).astype(np.float32)[:, None]
            sc = rng.uniform(0.6, 1.0, (b, regions)).astype(np.float32) * present
            cj = np.maximum(conc[:, j], 0)
            x += sc[..., None] * world.protos[cj][:, None, :]
            x += (0.8 * sc)[..., None] * world.attrs[attrs[:, j]][:, None, :]
        bg_w = np.full((b, regions), 0.3, dtype=np.float32)
    g1 = rng.integers(0, len(world.background), (b, regions))
    g2 = rng.integers(0, len(world.background), (b, regions))
    w = rng.uniform(0.2, 1.0, (b, regions)).astype(np.float32)
    x += (bg_w * w)[..., None] * world.background[g1]
    x += (bg_w * (1 - w))[..., None] * world.background[g2]
    if noise > 0:
        eps = rng.standard_normal((b, regions, d), dtype=np.float32)
        eps *= noise
        x += eps
    np.maximum(x, 0.0, out=x)  # detector features are post-ReLU: non-negative, sparse
    return x


def _write_features(path: Path, world: _World, imgs: _Images, *, regions: int, dim: int, noise: float,
                    dtype: str, rng: np.random.Generator, on_rows: Callable[[int], None]) -> None:
    n = len(imgs.k)
    tmp = _tmp_name(path)
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(n, regions, dim))
        del mm  # creates header + sparse file; windows below map it afresh
        row_bytes = regions * dim * np.dtype(dtype).itemsize
        window = max(_IMAGE_CHUNK, (_WINDOW_BYTES // max(row_bytes, 1)) // _IMAGE_CHUNK * _IMAGE_CHUNK)
        for w0 in range(0, n, window):
            # Reopening per window unmaps written pages, so they stop counting toward our RSS.
            mm = np.lib.format.open_memmap(tmp, mode="r+")
            for lo in range(w0, min(w0 + window, n), _IMAGE_CHUNK):
                hi = min(lo + _IMAGE_CHUNK, n)
                mm[lo:hi] = _feature_chunk(world, imgs, lo, hi, regions, noise, rng)
                on_rows(hi - lo)
            mm.flush()
            del mm
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------------
# Captions.
# --------------------------------------------------------------------------------------------------


def _sentence(lex: _Lexicon, mentions: list[tuple[int, int | None]], rnd: random.Random) -> str:
    """Words for ``mentions`` [(concept, attribute or None)] with filler, in shuffled order."""
    mentions = mentions[:]
    rnd.shuffle(mentions)
    words: list[str] = [rnd.choice(lex.fillers) for _ in range(rnd.choice((0, 1, 1, 2)))]
    for j, (c, a) in enumerate(mentions):
        if j:
            words.append(rnd.choice(lex.connectors))
            if rnd.random() < 0.3:
                words.append(rnd.choice(lex.fillers))
        noun = rnd.choice(lex.concepts[c])
        words.append(lex.attributes[a] + lex.attr_link + noun if a is not None else noun)
    words += [rnd.choice(lex.fillers) for _ in range(rnd.choice((0, 0, 1, 2)))]
    text = lex.joiner.join(words)
    if lex.joiner == " ":
        text = text[:1].upper() + text[1:]
    return text + rnd.choice(lex.end)


def _clean_mentions(imgs: _Images, i: int, rnd: random.Random) -> list[tuple[int, int | None]]:
    """Most, not always all, of image i's concepts; some with their attribute word."""
    k = int(imgs.k[i])
    keep = list(range(k))
    if k >= 2 and rnd.random() < 0.35:
        keep.remove(rnd.randrange(k))
    return [(int(imgs.concepts[i, j]), int(imgs.attrs[i, j]) if rnd.random() < 0.4 else None) for j in keep]


def _boilerplate(lex: _Lexicon, rnd: random.Random) -> str:
    return lex.bp_sep.join(rnd.sample(lex.boilerplate, rnd.choice((2, 3, 4))))


_EMPTY = ("", " ", "   ", "\t", " \n ")


def _noise_plan(n_pairs: int, noise_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Noise type per pair (object array of names): exact counts, random positions."""
    n_noisy = int(round(noise_rate * n_pairs))
    counts = {t: int(np.floor(f * n_noisy)) for t, f in NOISE_MIX.items()}
    counts["shuffled"] += n_noisy - sum(counts.values())  # rounding remainder goes to the largest type
    labels = ["clean"] * (n_pairs - n_noisy)
    for t in NOISE_MIX:
        labels += [t] * counts[t]
    return np.asarray(labels, dtype=object)[rng.permutation(n_pairs)]


def _pick_unrelated(imgs: _Images, own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each image in ``own``, another image sharing at most one concept."""
    n = len(imgs.k)
    out = np.full(len(own), -1, dtype=np.int64)
    todo = np.arange(len(own))
    for _ in range(64):
        if len(todo) == 0:
            break
        cand = rng.integers(0, n, size=len(todo))
        a, b = imgs.concepts[own[todo]], imgs.concepts[cand]
        shared = ((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).sum(axis=(1, 2))
        ok = (shared <= 1) & (cand != own[todo])
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
    if len(todo):
        # Tiny worlds (a handful of concepts) may have no unrelated image: fall back to any other.
        out[todo] = (own[todo] + 1 + rng.integers(0, max(n - 1, 1), size=len(todo))) % max(n, 1)
    return out


def _captions(imgs: _Images, feature_row: np.ndarray, kinds: np.ndarray, world: _World,
              rng: np.random.Generator, rnd: random.Random):
    """Caption text, mentioned concepts and language per pair."""
    n = len(feature_row)
    langs = rng.choice(len(world.languages), size=n, p=world.lang_p)
    shuffled = np.nonzero(kinds == "shuffled")[0]
    donor = np.full(n, -1, dtype=np.int64)
    donor[shuffled] = _pick_unrelated(imgs, feature_row[shuffled], rng)
    n_concepts = len(world.protos)
    texts: list[str] = []
    mentioned: list[list[int]] = []
    for p in range(n):
        lex = world.lexicons[world.languages[langs[p]]]
        i = int(feature_row[p])
        kind = kinds[p]
        if kind == "clean":
            ment = _clean_mentions(imgs, i, rnd)
        elif kind == "shuffled":
            j = int(donor[p])
            ment = _clean_mentions(imgs, j, rnd)
            own = set(imgs.concept_list(i))
            if describes(own, [c for c, _ in ment]):
                # The donor shares a concept and the caption is short: mention only the donor's other
                # concepts (it has at least one) so the caption really is about another image.
                ment = [(int(imgs.concepts[j, q]), int(imgs.attrs[j, q]) if rnd.random() < 0.4 else None)
                        for q in range(int(imgs.k[j])) if int(imgs.concepts[j, q]) not in own]
        elif kind == "partial":
            own_list = imgs.concept_list(i)
            own = set(own_list)
            ment = []
            if rnd.random() < 0.6:
                j = rnd.randrange(len(own_list))
                ment.append((own_list[j], int(imgs.attrs[i, j]) if rnd.random() < 0.4 else None))
            # Absent concepts: often plausible ones from the same scene, else anything.
            pool = [c for c in world.pools[int(imgs.scene[i])] if c not in own]
            want = rnd.choice((2, 3))
            chosen: list[int] = []
            while len(chosen) < want:
                c = rnd.choice(pool) if pool and rnd.random() < 0.5 else rnd.randrange(n_concepts)
                if c not in own and c not in chosen:
                    chosen.append(c)
            ment += [(c, rnd.randrange(_N_ATTRIBUTES) if rnd.random() < 0.4 else None) for c in chosen]
        elif kind == "boilerplate":
            ment = []
        else:  # empty
            ment = []
        if kind == "boilerplate":
            text = _boilerplate(lex, rnd)
        elif kind == "empty":
            text = rnd.choice(_EMPTY)
        else:
            text = _sentence(lex, ment, rnd)
        texts.append(text)
        mentioned.append(sorted({c for c, _ in ment}))
    return texts, mentioned, [world.languages[g] for g in langs]


# --------------------------------------------------------------------------------------------------
# Writing a split.
# --------------------------------------------------------------------------------------------------

_SITES = ("shop", "blog", "news", "forum", "wiki", "photos", "market", "travel", "recipes", "cdn")


def _write_split(d: Path, *, prefix: str, uri_prefix: str, world: _World, imgs: _Images, cpi: int,
                 n_pairs: int, noise_rate: float, regions: int, dim: int, noise: float, dtype: str,
                 rng: np.random.Generator, rnd: random.Random, feat_rng: np.random.Generator,
                 on_rows: Callable[[int], None]) -> dict[str, int]:
    d.mkdir(parents=True, exist_ok=True)
    feature_row = np.arange(n_pairs, dtype=np.int64) // cpi
    kinds = _noise_plan(n_pairs, noise_rate, rng)
    texts, mentioned, langs = _captions(imgs, feature_row, kinds, world, rng, rnd)
    width = max(6, len(str(n_pairs)))
    pair_ids = [f"{prefix}{p + 1:0{width}d}" for p in range(n_pairs)]
    uwidth = max(6, len(str(len(imgs.k))))
    site_idx = rng.integers(0, len(_SITES), size=n_pairs)
    site_num = rng.integers(1, 500, size=n_pairs)
    manifest = pa.table({
        "pair_id": pa.array(pair_ids, pa.string()),
        "caption": pa.array(texts, pa.string()),
        "image_uri": pa.array([f"{uri_prefix}{r:0{uwidth}d}.jpg" for r in feature_row], pa.string()),
        "feature_row": pa.array(feature_row, pa.int64()),
        "source_site": pa.array([f"{_SITES[s]}{k}.example" for s, k in zip(site_idx, site_num)], pa.string()),
        "crawl_rank": pa.array(rng.integers(1, 10_000_000, size=n_pairs), pa.int64()),
    })
    img_lists = [imgs.concept_list(int(r)) for r in feature_row]
    truth = pa.table({
        "pair_id": pa.array(pair_ids, pa.string()),
        "noisy": pa.array(kinds != "clean", pa.bool_()),
        "noise_type": pa.array(kinds.tolist(), pa.string()),
        "image_concepts": pa.array(img_lists, pa.list_(pa.int32())),
        "caption_concepts": pa.array(mentioned, pa.list_(pa.int32())),
        "language": pa.array(langs, pa.string()),
        "scene": pa.array(imgs.scene[feature_row], pa.int32()),
    })
    _write_features(d / "features.npy", world, imgs, regions=regions, dim=dim, noise=noise, dtype=dtype,
                    rng=feat_rng, on_rows=on_rows)
    _atomic_parquet(truth, d / "truth.parquet")
    _atomic_parquet(manifest, d / "manifest.parquet")  # last: its presence means the split is whole
    return {t: int((kinds == t).sum()) for t in NOISE_TYPES}


def generate(
    out_dir: str | os.PathLike,
    *,
    n_pairs: int = 10_000,
    noise_rate: float = 0.5,
    regions: int = 36,
    dim: int = 256,
    n_test: int = 1000,
    captions_per_image: int = 1,
    n_concepts: int = 300,
    n_scenes: int = 60,
    languages: Sequence[str] = LANGUAGES,
    feature_noise: float = 1.0,
    seed: int = 0,
    dtype: str = "float16",
    progress: Callable[[int, int], None] | None = None,
) -> SynthInfo:
    """Write a noisy training corpus, a clean test split and their ground truth under ``out_dir``.

    Layout: ``manifest.parquet``, ``features.npy`` ``[n_images, regions, dim]``, ``truth.parquet``,
    ``test/`` (same three files, clean, one caption per image) and ``synth.json`` (the parameters).
    """
    t0 = time.perf_counter()
    languages = tuple(languages)
    _check(n_pairs=n_pairs, noise_rate=noise_rate, regions=regions, dim=dim, n_test=n_test,
           captions_per_image=captions_per_image, n_concepts=n_concepts, n_scenes=n_scenes,
           languages=languages, feature_noise=feature_noise, dtype=dtype, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(n_pairs=n_pairs, noise_rate=noise_rate, regions=regions, dim=dim, n_test=n_test,
                  captions_per_image=captions_per_image, n_concepts=n_concepts, n_scenes=n_scenes,
                  languages=list(languages), feature_noise=feature_noise, seed=seed, dtype=dtype,
                  noise_mix=NOISE_MIX, format_version=1)

    # Independent streams per part, so e.g. changing n_test leaves the training split unchanged.
    ss = np.random.SeedSequence(seed)
    s_world, s_train, s_train_feat, s_test, s_test_feat = ss.spawn(5)

    def py_random(s: np.random.SeedSequence) -> random.Random:
        return random.Random(int(s.generate_state(2, dtype=np.uint64)[0]))

    world = _build_world(np.random.default_rng(s_world), py_random(s_world), n_concepts=n_concepts,
                         n_scenes=n_scenes, dim=dim, languages=languages)
    n_images = -(-n_pairs // captions_per_image)
    done = [0]
    total = n_images + n_test

    def on_rows(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], total)

    rnd_train = py_random(s_train)
    train_imgs = _draw_images(n_images, world, rnd_train)
    counts = _write_split(out, prefix="p", uri_prefix="synth://img/", world=world, imgs=train_imgs,
                          cpi=captions_per_image, n_pairs=n_pairs, noise_rate=noise_rate, regions=regions,
                          dim=dim, noise=feature_noise, dtype=dtype, rng=np.random.default_rng(s_train),
                          rnd=rnd_train, feat_rng=np.random.default_rng(s_train_feat), on_rows=on_rows)
    if n_test > 0:
        rnd_test = py_random(s_test)
        test_imgs = _draw_images(n_test, world, rnd_test)
        _write_split(out / "test", prefix="t", uri_prefix="synth://test/img/", world=world, imgs=test_imgs,
                     cpi=1, n_pairs=n_test, noise_rate=0.0, regions=regions, dim=dim, noise=feature_noise,
                     dtype=dtype, rng=np.random.default_rng(s_test), rnd=rnd_test,
                     feat_rng=np.random.default_rng(s_test_feat), on_rows=on_rows)
    n_noisy = n_pairs - counts["clean"]
    summary = dict(params=params, n_images=n_images, n_noisy=n_noisy, noise_counts=counts)
    _atomic_bytes(json.dumps(summary, indent=1, sort_keys=True).encode(), out / "synth.json")
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return SynthInfo(out_dir=out, n_pairs=n_pairs, n_images=n_images, n_test=n_test, n_noisy=n_noisy,
                     noise_counts=counts, params=params, seconds=time.perf_counter() - t0, files=files)


def _check(*, n_pairs, noise_rate, regions, dim, n_test, captions_per_image, n_concepts, n_scenes, languages,
           feature_noise, dtype, seed) -> None:
    def need(ok: bool, param: str, message: str) -> None:
        if not ok:
            raise SynthError(param, message)

    need(isinstance(n_pairs, int) and n_pairs >= 1, "n_pairs", f"must be an integer >= 1, got {n_pairs!r}")
    need(0.0 <= noise_rate <= 1.0, "noise_rate", f"must be within [0, 1], got {noise_rate!r}")
    need(isinstance(regions, int) and regions >= 1, "regions", f"must be an integer >= 1, got {regions!r}")
    need(isinstance(dim, int) and dim >= 2, "dim", f"must be an integer >= 2, got {dim!r}")
    need(isinstance(n_test, int) and n_test >= 0, "n_test", f"must be an integer >= 0, got {n_test!r}")
    need(isinstance(captions_per_image, int) and captions_per_image >= 1, "captions_per_image",
         f"must be an integer >= 1, got {captions_per_image!r}")
    need(isinstance(n_concepts, int) and n_concepts >= 8, "n_concepts",
         f"must be an integer >= 8 (partial-match noise needs absent concepts), got {n_concepts!r}")
    need(isinstance(n_scenes, int) and n_scenes >= 1, "n_scenes", f"must be an integer >= 1, got {n_scenes!r}")
    need(len(languages) >= 1, "languages", "give at least one language")
    bad = [lang for lang in languages if lang not in LANGUAGES]
    need(not bad, "languages", f"unsupported {bad}; choose from {list(LANGUAGES)}")
    need(len(set(languages)) == len(languages), "languages", f"duplicates in {list(languages)}")
    need(feature_noise >= 0, "feature_noise", f"must be >= 0, got {feature_noise!r}")
    need(dtype in ("float16", "float32"), "dtype", f"must be 'float16' or 'float32', got {dtype!r}")
    need(isinstance(seed, int) and seed >= 0, "seed", f"must be an integer >= 0, got {seed!r}")


# --------------------------------------------------------------------------------------------------
# Atomic file helpers.
# --------------------------------------------------------------------------------------------------


def _tmp_name(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes 0600; outputs are meant to be shared read-only
    return Path(name)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = _tmp_name(path)
    try:
        pq.write_table(table, tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _atomic_bytes(data: bytes, path: Path) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
