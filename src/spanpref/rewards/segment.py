"""Cut a response into segments (sentences, sub-sentences, or the whole response) with exact character offsets.

Fine-Grained RLHF (Wu et al., 2023) gives one reward per segment: relevance per sub-sentence, factuality per
sentence, completeness per response. A segment is `[start, end)` in Python `str` offsets, without its surrounding
whitespace, so `text[seg.start:seg.end]` is the segment and everything between two segments is whitespace. The
splitter is rule-based (no model, no download) and deterministic; a sentence ends at `.`, `!` or `?` (plus closing
quotes or brackets) followed by whitespace, except after common abbreviations and initials, or where the text goes
on in lower case; a blank line always ends one. A
sub-sentence additionally ends at `,`, `;` or `:` followed by whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUB_SENTENCE = "sub_sentence"
SENTENCE = "sentence"
RESPONSE = "response"
LEVELS = (SUB_SENTENCE, SENTENCE, RESPONSE)

# a word ending in one of these before a period does not end a sentence ("Dr. Who", "e.g. this")
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "approx",
        "no",
        "vol",
        "fig",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "u.s",
        "u.k",
    ]
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_CLAUSE_END = re.compile(r"[,;:][\"'”’)\]]*(?=\s)")


@dataclass(frozen=True)
class Segment:
    start: int  # Python str offset, inclusive
    end: int  # exclusive

    def text(self, text: str) -> str:
        return text[self.start : self.end]


def _strip(text: str, start: int, end: int) -> Segment | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Segment(start, end) if start < end else None


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the period at `dot` closes an abbreviation or an initial rather than a sentence."""
    word_start = dot
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:dot].lower().lstrip("(\"'“‘[")
    if word in ABBREVIATIONS:
        return True
    # a single capital letter ("J. R. R. Tolkien"), but not the pronoun "I" at the end of a sentence
    return len(word) == 1 and word.isalpha() and word != "i" and text[dot - 1].isupper()


def _continues(text: str, end: int) -> bool:
    """Whether the text after a terminator at `end` reads as the same sentence (it goes on in lower case)."""
    m = re.compile(r"\s*(\S)").match(text, end)
    return bool(m) and m.group(1).islower()


def _split(text: str, pattern: re.Pattern[str], within: Segment, sentences: bool) -> list[Segment]:
    out = []
    start = within.start
    for m in pattern.finditer(text, within.start, within.end):
        single_dot = text[m.start()] == "." and m.end() - m.start() == 1
        if sentences and ((single_dot and _is_abbreviation(text, m.start())) or _continues(text, m.end())):
            continue
        seg = _strip(text, start, m.end())
        if seg:
            out.append(seg)
        start = m.end()
    seg = _strip(text, start, within.end)
    if seg:
        out.append(seg)
    return out


def split_sentences(text: str) -> list[Segment]:
    """Sentences of `text`; a paragraph break (a blank line) always ends one."""
    out = []
    for para in re.finditer(r"(?:(?!\n\s*\n).)+", text, re.S):
        block = _strip(text, para.start(), para.end())
        if block:
            out.extend(_split(text, _SENTENCE_END, block, sentences=True))
    return out


def split_sub_sentences(text: str) -> list[Segment]:
    """Sentences further cut at `,`, `;` and `:` followed by whitespace (so "1,000" stays whole)."""
    return [sub for sent in split_sentences(text) for sub in _split(text, _CLAUSE_END, sent, sentences=False)]


def split_segments(text: str, level: str) -> list[Segment]:
    """Segments of `text` at `level`: sub_sentence, sentence or response (one segment; none for blank text)."""
    if level == SUB_SENTENCE:
        return split_sub_sentences(text)
    if level == SENTENCE:
        return split_sentences(text)
    if level == RESPONSE:
        seg = _strip(text, 0, len(text))
        return [seg] if seg else []
    raise ValueError(f"unknown segment level {level!r}; choose from {list(LEVELS)}")
