"""Product titles as model input: normalisation, hashed n-gram tokens, and the degradations used in training.

Numpy only (no torch), so every engine, the onnx one included, tokenises the same way. A title becomes a row of
bucket ids: its words, its word bigrams and the character n-grams of each word (fastText style, with "<" and ">"
marking the word's ends, so "men" inside "women" stays distinguishable), each hashed into `buckets` - 1 buckets
numbered from 1. 0 is padding: a row of zeros is "no title", and rows are padded to one length, which keeps the
model's input a plain (N, L) int64 tensor that ONNX takes as it is.

Hashing is CRC-32, not Python's hash(): the ids must be the same in every process and on every machine that
loads the model, and hash() of a str is salted per process.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

_NOT_WORD = re.compile(r"[^\w]+")
_CACHE_LIMIT = 200_000  # word -> ids entries kept; a flood of new words (a hostile client) cannot grow it forever
# A title is read up to max_len * CHARS_PER_ID characters: room for max_len words of 31 letters, more than any real
# title holds. Normalising and hashing cost in proportion to the text: a 10 MB title cost 9 s and 1.2 GB when it
# was tokenised whole and cut to max_len ids only afterwards.
CHARS_PER_ID = 32


def normalise(title: str) -> str:
    """Lower case, NFKC (full-width letters, ligatures and composed accents fold to one form), and words of letters
    and digits separated by single spaces: "Puma Men's BLUE Shoes!" -> "puma men s blue shoes"."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", title).lower()).split())


def words_of(names: Iterable[str]) -> set[str]:
    """The normalised words of class names, e.g. a colour vocabulary ["Navy Blue", "Off White"] ->
    {"navy", "blue", "off", "white"}: the words to strip from titles to test a model without them."""
    return {w for name in names for w in normalise(name).split()}


def _hash(feature: str, buckets: int) -> int:
    return 1 + zlib.crc32(feature.encode()) % (buckets - 1)


@dataclass
class Tokenizer:
    """Titles -> (N, max_len) int64 bucket ids, 0 = padding. The fields are what model.json records
    (arch_args.title.tokenizer) and all a tokenizer needs to reproduce the ids."""

    buckets: int = 2 ** 16
    max_len: int = 160                 # Kaggle titles: 79 ids at the median, 138 at p99, 214 at most
    chars: tuple[int, int] = (3, 5)    # shortest and longest character n-gram; (0, 0) for none
    word_ngrams: int = 2               # 1: words only, 2: words and adjacent pairs
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.chars = tuple(self.chars)  # a list when read back from JSON
        if self.buckets < 2:
            raise ValueError("buckets must be at least 2 (bucket 0 is padding)")

    def config(self) -> dict:
        return {"buckets": self.buckets, "max_len": self.max_len, "chars": list(self.chars),
                "word_ngrams": self.word_ngrams}

    def ids(self, title: str) -> list[int]:
        """A title's first max_len bucket ids (all that its row holds), unpadded: per word its own id then its
        character n-grams, then the bigrams. Words come first so that a title cut at max_len loses its tail's
        sub-word detail, not whole words."""
        # Every word gives one id at least, so words past the first max_len never reach the row.
        words = normalise(title[:self.max_len * CHARS_PER_ID]).split()[:self.max_len]
        out: list[int] = []
        for w in words:
            out += self._word_ids(w)
        if self.word_ngrams >= 2:
            out += [_hash(f"b:{a} {b}", self.buckets) for a, b in zip(words, words[1:])]
        return out[:self.max_len]

    def _word_ids(self, word: str) -> list[int]:
        # Titles reuse a small vocabulary (brands, article names, colours): caching per word makes
        # tokenising mostly dictionary look-ups.
        found = self._cache.get(word)
        if found is None:
            marked = f"<{word}>"
            lo, hi = self.chars
            grams = [marked[i:i + n] for n in range(lo, hi + 1) if n > 0 for i in range(len(marked) - n + 1)]
            found = ([_hash(f"w:{word}", self.buckets)] + [_hash(f"c:{g}", self.buckets) for g in grams
                                                           if g != marked]  # the whole word is already its own id
                     )[:self.max_len]  # a row holds no more: a long word cached in full would only hold memory
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = found
        return found

    def __call__(self, titles: Sequence[str | None]) -> np.ndarray:
        """(len(titles), max_len) int64; None or an empty title gives a row of padding ("no title")."""
        out = np.zeros((len(titles), self.max_len), dtype=np.int64)
        for i, title in enumerate(titles):
            if title:
                row = self.ids(title)
                out[i, :len(row)] = row
        return out


def tokenizer_of(meta: dict) -> Tokenizer | None:
    """The tokenizer a model folder's model.json records, or None for a photo-only model."""
    title = meta.get("arch_args", {}).get("title")
    return Tokenizer(**title.get("tokenizer", {})) if title is not None else None


# Degradations: what a model must survive when a listing's title is missing, short or vague. "" is no title.

def truncate(title: str, words: int) -> str:
    """The first `words` words."""
    return " ".join(title.split()[:words])


def drop_words(title: str, fraction: float, rng: np.random.Generator) -> str:
    """Each word dropped with probability `fraction`."""
    return " ".join(w for w in title.split() if rng.random() >= fraction)


def remove_words(title: str, words: set[str]) -> str:
    """Without the words in `words` (normalised, e.g. from words_of(colour vocabulary)): a title that names no
    colour or gender, to measure what the photo still has to decide."""
    return " ".join(w for w in normalise(title).split() if w not in words)


@dataclass(frozen=True)
class TitleDropout:
    """Training-time title degradation, drawn per title: dropped entirely (`drop`: the model must tag from the
    photo alone), else cut to a random 1..n-1 leading words (`truncate`), else with each word dropped with
    probability `word_drop`. Seeded by the caller's rng, so an epoch is reproducible."""

    drop: float = 0.3
    truncate: float = 0.15
    word_drop: float = 0.15

    def __call__(self, titles: Sequence[str], rng: np.random.Generator) -> list[str]:
        out = []
        for title, u in zip(titles, rng.random(len(titles))):
            if u < self.drop:
                out.append("")
            elif u < self.drop + self.truncate and len(title.split()) > 1:
                out.append(truncate(title, int(rng.integers(1, len(title.split())))))
            else:
                out.append(drop_words(title, self.word_drop, rng) if self.word_drop else title)
        return out


# "Men's" read as "Mens": split at the apostrophe, its "s" would be a word of its own, and name a size S.
_POSSESSIVE = re.compile(r"['’]s\b", re.IGNORECASE)
# A class's name may take this many of a title's words ("T-shirt" is two words once normalised, "Navy Blue" two).
_NAME_WORDS = 4


def name_spans(title: str) -> list[tuple[int, int, str]]:
    """Every run of one to _NAME_WORDS of a title's normalised words, as (start, end, key): the run's words
    joined and stemmed (ClassNames matches keys)."""
    words = normalise(_POSSESSIVE.sub("s", title)).split()
    return [(i, j, _stem("".join(words[i:j]))) for i in range(len(words))
            for j in range(i + 1, min(len(words), i + _NAME_WORDS) + 1)]


class ClassNames:
    """Which of a task's classes a title names: a run of the title's words that, joined, is the class's name
    joined, case and a plural aside ("T-shirt" names Tshirts, "navy blue" Navy Blue, "Girl's" Girls); a name
    inside a longer one does not count ("Navy Blue Shoes" names Navy Blue, not Blue)."""

    def __init__(self, classes: Iterable[str]):
        self.classes = list(classes)
        self.by_key: dict[str, str] = {}
        for c in self.classes:
            key = _stem("".join(normalise(c).split()))
            if key:
                self.by_key.setdefault(key, c)

    def found(self, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        """Each span of a title (its name_spans, computed once for several tasks) that is a class's name, as
        (start, end, class)."""
        return [(i, j, self.by_key[k]) for i, j, k in spans if k in self.by_key]

    def named(self, spans: list[tuple[int, int, str]], others: Iterable[tuple[int, int]] = ()) -> set[str]:
        """The classes named in a title given as its name_spans; a name inside a longer one, of this task's or
        of `others` (other tasks' names found in the title: "Casual" in the article type "Casual Shoes" is not
        the usage Casual), does not count."""
        found = self.found(spans)
        longer = [(a, b) for a, b, _ in found] + list(others)
        return {c for i, j, c in found if not any(a <= i and j <= b and b - a > j - i for a, b in longer)}

    def named_in(self, title: str) -> set[str]:
        return self.named(name_spans(title))


def _stem(word: str) -> str:
    """A word without its plural ending: "dresses" -> "dress", "boys" -> "boy", "dress" stays."""
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word
