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
        ("Louis XIV and Chapter III", "louis fourteen and chapter three"),
        ("It cost $5.5.", "it cost five dollars fifty cents."),
        ("Call 555-1234 now", "call five five five, one two three four now"),
        ("Say 1,2,3 and 1,234,567", "say one,two,three and one million two hundred thirty-four thousand five hundred "
         "sixty-seven"),
        ("He lived on Main St. near St. Paul's.", "he lived on main street near saint paul's."),
        ("I saw a MIX of X and V", "i saw a mix of x and v"),
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
