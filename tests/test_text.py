from __future__ import annotations

import pytest

from ttsbench.text import EOS, SYMBOLS, TextProcessor, UnknownCharactersError, english_cleaners


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("In 1884 the Press", "in eighteen eighty-four the press"),
        ("Mr. Smith paid $3.50.", "mister smith paid three dollars fifty cents."),
        ("the 2nd of 25 men", "the second of twenty-five men"),
        ("  Many   spaces\there ", "many spaces here"),
        ("naïve café [sic]", "naive cafe (sic)"),
        ("1,000 men", "one thousand men"),
    ],
)
def test_english_cleaners(raw, clean):
    assert english_cleaners(raw) == clean


def test_encode_decode_round_trip_with_eos():
    processor = TextProcessor()
    ids = processor.encode("Printing, in the only sense.")
    assert ids[-1] == processor.eos_id == SYMBOLS.index(EOS)
    assert processor.pad_id == 0 and 0 not in ids
    assert processor.decode(ids) == "printing, in the only sense."


def test_unknown_characters_error_lists_them():
    with pytest.raises(UnknownCharactersError) as err:
        TextProcessor().encode("a+b=c & d")
    message = str(err.value)
    for char in "+=&":
        assert repr(char) in message


def test_unknown_characters_dropped_with_warning():
    with pytest.warns(UserWarning, match="dropping unknown"):
        ids = TextProcessor(on_unknown="drop").encode("a+b")
    assert TextProcessor().decode(ids) == "ab"


def test_every_standard_split_sentence_encodes():
    from ttsbench.data import standard_split_sentences

    processor = TextProcessor()
    for split in ("val", "test"):
        for _, text in standard_split_sentences(split):
            assert len(processor.encode(text)) > 1
