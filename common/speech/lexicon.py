"""Pronunciations (ARPAbet phones, no stress marks) for the words a recognizer must know.

A word is looked up in a pronouncing dictionary (CMUdict's format: ``word PH ON ES`` per
line; ``word(2)`` lines are alternatives, kept too). A word it lacks, common in catalogs
(brand names, "tshirts", "kurtas"), is pronounced as

1. a plural or possessive of a known word ("capris" -> "capri" + Z),
2. a compound of known words, fewest parts first ("tshirts" -> "t" + "shirts",
   "cufflinks" -> "cuff" + "links"),
3. spelled letter by letter when it has no vowel ("xl"),
4. else by spelling rules: common letter groups first ("sh", "ee", "tion"), then single
   letters. Rough, but it lets a new brand be said and heard.
"""

from __future__ import annotations

from pathlib import Path

_GROUPS = {
    "tion": "SH AH N", "sion": "ZH AH N", "augh": "AO", "ough": "AO", "igh": "AY",
    "tch": "CH", "sch": "SH", "sh": "SH", "ch": "CH", "th": "TH", "ph": "F", "ck": "K",
    "ng": "NG", "qu": "K W", "wh": "W", "gh": "G", "kh": "K", "dh": "D", "bh": "B",
    "ee": "IY", "ea": "IY", "oo": "UW", "ou": "AW", "ow": "OW", "ai": "EY", "ay": "EY",
    "oi": "OY", "oy": "OY", "au": "AO", "aw": "AO", "ie": "IY", "ei": "EY", "ey": "IY",
    "ue": "UW", "ew": "UW", "oa": "OW", "ar": "AA R", "er": "ER", "ir": "ER", "ur": "ER",
    "or": "AO R",
}  # fmt: skip
_LETTERS = {
    "a": "AA", "b": "B", "c": "K", "d": "D", "e": "EH", "f": "F", "g": "G", "h": "HH",
    "i": "IH", "j": "JH", "k": "K", "l": "L", "m": "M", "n": "N", "o": "OW", "p": "P",
    "q": "K", "r": "R", "s": "S", "t": "T", "u": "UW", "v": "V", "w": "W", "x": "K S",
    "y": "IY", "z": "Z",
}  # fmt: skip
_VOWELS = set("aeiouy")
_ONSETS = set(
    "bl br ch cl cr dr dw fl fr gh gl gn gr kh kl kn kr ph pl pr ps sc sh sk sl sm sn sp st "
    "sw th tr tw wh wr".split()
)
_VOICELESS = {"P", "T", "K", "F", "TH"}
_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}


class Lexicon:
    """Word -> pronunciations, from a dictionary file with rules for unknown words."""

    def __init__(self, entries: dict[str, list[str]]) -> None:
        self.entries = entries

    @classmethod
    def read(cls, path: Path) -> Lexicon:
        entries: dict[str, list[str]] = {}
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                word, _, phones = line.strip().partition(" ")
                if word and phones:
                    entries.setdefault(word.split("(", 1)[0], []).append(phones.strip())
        return cls(entries)

    def pronounce(self, word: str) -> list[str]:
        """Every pronunciation of ``word`` (lower case, letters), at least one."""
        if word in self.entries:
            return self.entries[word]
        return [
            self._inflected(word)
            or self._compound(word)
            or (self._spelled(word) if not _VOWELS & set(word) else None)
            or spelling_rules(word)
        ]

    def _inflected(self, word: str) -> str | None:
        for suffix in ("'s", "s"):
            stem = word.removesuffix(suffix)
            if stem != word and stem in self.entries:
                base = self.entries[stem][0]
                last = base.split()[-1]
                ending = "IH Z" if last in _SIBILANTS else "S" if last in _VOICELESS else "Z"
                return f"{base} {ending}"
        return None

    def _compound(self, word: str) -> str | None:
        """Fewest known parts of three letters or more; a first letter said by its name
        when the next cannot follow it at the start of an English word ("t" + "shirts")."""
        best: dict[int, list[str]] = {0: []}
        for end in range(1, len(word) + 1):
            for start in range(end):
                part = word[start:end]
                said_as_letter = (
                    end == 1 and not _VOWELS & set(word[:2]) and word[:2] not in _ONSETS
                )
                if start not in best or (len(part) < 3 and not said_as_letter):
                    continue
                if self._known(part) is not None:
                    candidate = [*best[start], self._known(part) or ""]
                    if end not in best or len(candidate) < len(best[end]):
                        best[end] = candidate
        parts = best.get(len(word), [])
        return " ".join(parts) if len(parts) > 1 else None

    def _known(self, part: str) -> str | None:
        return self.entries[part][0] if part in self.entries else self._inflected(part)

    def _spelled(self, word: str) -> str | None:
        if all(letter in self.entries for letter in word):
            return " ".join(self.entries[letter][0] for letter in word)
        return None


def spelling_rules(word: str) -> str:
    """A rough pronunciation from letter groups; doubled letters and a final silent "e"
    (after a consonant, in words over three letters) are said once or not at all."""
    silent_e = len(word) > 3 and word.endswith("e") and word[-2] not in _VOWELS
    letters = word[:-1] if silent_e else word
    phones: list[str] = []
    i = 0
    while i < len(letters):
        for size in (4, 3, 2):
            group = letters[i : i + size]
            if len(group) == size and group in _GROUPS:
                phones.append(_GROUPS[group])
                i += size
                break
        else:
            letter = letters[i]
            if letter in _LETTERS and not (i and letters[i - 1] == letter):
                phones.append(_LETTERS[letter])
            i += 1
    return " ".join(phones) or "AH"
