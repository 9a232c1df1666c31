import pytest

from common.speech.lexicon import Lexicon, spelling_rules


@pytest.fixture
def lexicon(tmp_path):
    path = tmp_path / "words.dict"
    path.write_text(
        "t T IY\nshirts SH ER T S\ncuff K AH F\nlinks L IH NG K S\ncapri K AH P R IY\n"
        "read R IY D\nread(2) R EH D\nx EH K S\nl EH L\ns EH S\ncull K AH L\nwatch W AA CH\n"
    )
    return Lexicon.read(path)


def test_known_words_and_their_alternatives(lexicon):
    assert lexicon.pronounce("read") == ["R IY D", "R EH D"]


def test_plurals_and_possessives_of_known_words(lexicon):
    assert lexicon.pronounce("capris") == ["K AH P R IY Z"]
    assert lexicon.pronounce("watches") == [spelling_rules("watches")]  # "watche" unknown
    assert lexicon.pronounce("watch's") == ["W AA CH IH Z"]
    assert lexicon.pronounce("cuffs") == ["K AH F S"]


def test_compounds_of_known_words(lexicon):
    assert lexicon.pronounce("cufflinks") == ["K AH F L IH NG K S"]
    assert lexicon.pronounce("tshirts") == ["T IY SH ER T S"]  # "ts" starts no English word
    assert lexicon.pronounce("scullers") == [spelling_rules("scullers")]  # not "s" + "cullers"


def test_words_without_vowels_are_spelled(lexicon):
    assert lexicon.pronounce("xl") == ["EH K S EH L"]


def test_unknown_words_follow_spelling_rules(lexicon):
    assert lexicon.pronounce("kurtas") == ["K ER T AA S"]
    assert spelling_rules("fashion") == "F AA SH IH OW N"
    assert spelling_rules("tunic") == "T UW N IH K"
    assert spelling_rules("tube") == "T UW B"  # a final "e" after a consonant is silent
    assert spelling_rules("lotto") == "L OW T OW"  # a doubled letter said once
