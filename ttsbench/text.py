"""Text front end: English cleaners and a character symbol table shared by every system.

Characters, not phonemes, because every system here was published on LJSpeech characters and
a phonemiser would be one more moving part that differs between toolkits.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from unidecode import unidecode

from ttsbench.errors import UserError

if TYPE_CHECKING:
    import inflect

PAD = "_"
EOS = "~"
PUNCTUATION = "!'\"(),-.:;? "
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYMBOLS: tuple[str, ...] = (PAD, EOS, *PUNCTUATION, *LETTERS)

_ABBREVIATIONS = [
    (re.compile(rf"\b{abbr}\.", re.IGNORECASE), full)
    for abbr, full in [
        ("mrs", "misess"),
        ("mr", "mister"),
        ("dr", "doctor"),
        ("co", "company"),
        ("jr", "junior"),
        ("maj", "major"),
        ("gen", "general"),
        ("drs", "doctors"),
        ("rev", "reverend"),
        ("lt", "lieutenant"),
        ("hon", "honorable"),
        ("sgt", "sergeant"),
        ("capt", "captain"),
        ("esq", "esquire"),
        ("ltd", "limited"),
        ("col", "colonel"),
        ("ft", "fort"),
    ]
]
_WHITESPACE = re.compile(r"\s+")
_COMMA_NUMBER = re.compile(r"\b([0-9]{1,3}(?:,[0-9]{3})+)\b")  # thousands only: "1,2,3" is a list
_PHONE = re.compile(r"\b([0-9]{3})-([0-9]{4})\b")  # 555-1234: read digit by digit
_SAINT = re.compile(r"\bSt\.?(?=\s+[A-Z])")  # St. Paul: a saint before a name
_STREET = re.compile(r"\bSt\.", re.IGNORECASE)  # Main St.: a street after one
_ROMAN = re.compile(r"\b(?=[IVXL]{2,}\b)(L?X{0,3})(IX|IV|V?I{0,3})\b")  # II-LXXXIX, capitals only
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50}
_DECIMAL = re.compile(r"([0-9]+\.[0-9]+)")
_POUNDS = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_ORDINAL = re.compile(r"([0-9]+)(st|nd|rd|th)\b")
_NUMBER = re.compile(r"[0-9]+")


@functools.lru_cache(maxsize=1)
def _inflect() -> inflect.engine:
    """inflect's engine, made on first use: importing inflect takes ~3 s (its type checking),
    which every process (each job, each feature worker) would otherwise pay at startup."""
    import inflect

    return inflect.engine()


def _number_words(text: str) -> str:
    words = _inflect().number_to_words(text, andword="")
    return words.replace(",", "")


def _year_or_number(match: re.Match[str]) -> str:
    num = int(match.group(0))
    if 1000 < num < 3000 and num % 100 != 0 and not 2000 <= num < 2010:
        # Years read as pairs: 1884 -> eighteen eighty-four (LJSpeech's books are full of them).
        first, second = divmod(num, 100)
        tail = _number_words(str(second)) if second >= 10 else f"oh {_number_words(str(second))}"
        return f"{_number_words(str(first))} {tail}"
    return _number_words(match.group(0))


def _dollars(match: re.Match[str]) -> str:
    parts = match.group(1).replace(",", "").split(".")
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1][:2].ljust(2, "0")) if len(parts) > 1 and parts[1] else 0  # $5.5 is fifty cents
    out = []
    if dollars:
        out.append(f"{_number_words(str(dollars))} dollar{'s' if dollars != 1 else ''}")
    if cents:
        out.append(f"{_number_words(str(cents))} cent{'s' if cents != 1 else ''}")
    return " ".join(out) if out else "zero dollars"


def _roman(match: re.Match[str]) -> str:
    """A Roman numeral of two or more capitals as a number (XIV -> 14): read by expand_numbers."""
    values = [_ROMAN_VALUES[c] for c in match.group(0)]
    total = sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))
    return str(total)


def _digits(match: re.Match[str]) -> str:
    return ", ".join(" ".join(_number_words(d) for d in group) for group in match.groups())


def expand_numbers(text: str) -> str:
    text = _ROMAN.sub(_roman, text)
    text = _PHONE.sub(_digits, text)
    text = _COMMA_NUMBER.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS.sub(lambda m: f"{m.group(1)} pounds", text)
    text = _DOLLARS.sub(_dollars, text)
    text = _DECIMAL.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ORDINAL.sub(lambda m: _inflect().number_to_words(_inflect().ordinal(m.group(1))).replace(",", ""), text)
    return _NUMBER.sub(_year_or_number, text)


def english_cleaners(text: str) -> str:
    """ASCII (brackets become parentheses), numbers and abbreviations spelled out, lowercase."""
    text = unidecode(text).replace("[", "(").replace("]", ")")
    text = expand_numbers(text)
    text = _STREET.sub("street", _SAINT.sub("saint", text))
    for pattern, full in _ABBREVIATIONS:
        text = pattern.sub(full, text)
    text = text.lower()
    return _WHITESPACE.sub(" ", text).strip()


class UnknownCharactersError(UserError, ValueError):
    """Raised when text holds characters outside the symbol table and the policy is 'error'."""


@dataclass(frozen=True)
class TextProcessor:
    """Cleans text and maps it to ids; ids end with EOS so every system sees where text ends.

    on_unknown: "error" raises listing every unknown character; "drop" removes them with a warning.
    """

    on_unknown: Literal["error", "drop"] = "error"
    add_eos: bool = True

    @property
    def num_symbols(self) -> int:
        return len(SYMBOLS)

    @property
    def pad_id(self) -> int:
        return SYMBOLS.index(PAD)

    @property
    def eos_id(self) -> int:
        return SYMBOLS.index(EOS)

    def clean(self, text: str) -> str:
        return english_cleaners(text)

    def encode(self, text: str) -> list[int]:
        cleaned = self.clean(text)
        unknown = sorted({c for c in cleaned if c not in _SYMBOL_TO_ID or c in (PAD, EOS)})
        if unknown:
            listed = ", ".join(repr(c) for c in unknown)
            if self.on_unknown == "error":
                raise UnknownCharactersError(f"unknown characters {listed} in {text!r}")
            warnings.warn(f"dropping unknown characters {listed} from {text!r}", stacklevel=2)
            cleaned = "".join(c for c in cleaned if c not in unknown)
        ids = [_SYMBOL_TO_ID[c] for c in cleaned]
        if self.add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(SYMBOLS[i] for i in ids if i not in (self.pad_id, self.eos_id))


_SYMBOL_TO_ID = {s: i for i, s in enumerate(SYMBOLS)}
