"""Text normalisation: the question tokenizer and the official VQA answer normalisation.

Both follow the reference pipelines exactly (PIPELINE_FACTS.md), so that word ids, answer labels
and official accuracies match theirs.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

MAX_QUESTION_LENGTH = 14

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!"]
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
MAX_PERIODS_REMOVED = 32
_MARKS = frozenset([*PUNCTUATION, "."])
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) look-ahead that never
# matches "<=digit" before a period, so in effect it removes every period not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
CONTRACTIONS: dict[str, str] = json.loads((Path(__file__).with_name("vqa_contractions.json")).read_text())


def tokenize(sentence: str) -> list[str]:
    """Reference question tokenizer: lower, drop ',' and '?', split "'s" off, split on whitespace."""
    sentence = sentence.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return sentence.split()


def process_punctuation(text: str) -> str:
    """Official punctuation step.

    Each mark is deleted when "p " or " p" occurs in the original text, or when a digit,digit comma
    occurs anywhere; otherwise it is replaced by a space. Then at most 32 periods not followed by a
    digit are deleted.
    """
    out = text
    comma_between_digits = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or comma_between_digits:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Official digit/article step: lower, number words to digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


@lru_cache(maxsize=1 << 20)
def normalize_official(text: str) -> str:
    """Punctuation then digit/article processing, as the official evaluator applies them (the
    punctuation step is skipped for text without a mark it acts on: it would return the text as is)."""
    return process_digit_article(text if _MARKS.isdisjoint(text) else process_punctuation(text))


def normalize_answer(answer: str) -> str:
    """Answer normalisation for the answer vocabulary: the official steps, then remove ','."""
    return normalize_official(answer).replace(",", "")


def clean_whitespace(text: str) -> str:
    """The evaluator's first step on every answer: newlines and tabs to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


class Dictionary:
    """Word <-> id map. Ids in first-occurrence order; the padding index is len(words).

    Unknown words (at test time) map to the padding index, whose embedding row is zero, and are
    counted in `unknown_count`.
    """

    def __init__(self, words: list[str] | None = None) -> None:
        self.idx2word: list[str] = list(words or [])
        self.word2idx: dict[str, int] = {w: i for i, w in enumerate(self.idx2word)}
        self.unknown_count = 0

    def __len__(self) -> int:
        return len(self.idx2word)

    @property
    def padding_idx(self) -> int:
        return len(self.idx2word)

    def add_sentence(self, sentence: str) -> None:
        for word in tokenize(sentence):
            if word not in self.word2idx:
                self.word2idx[word] = len(self.idx2word)
                self.idx2word.append(word)

    def encode(self, sentence: str, max_length: int = MAX_QUESTION_LENGTH) -> list[int]:
        """Token ids of the first `max_length` words, padded on the LEFT with the padding index."""
        ids = []
        for word in tokenize(sentence)[:max_length]:
            idx = self.word2idx.get(word)
            if idx is None:
                self.unknown_count += 1
                idx = self.padding_idx
            ids.append(idx)
        return [self.padding_idx] * (max_length - len(ids)) + ids
