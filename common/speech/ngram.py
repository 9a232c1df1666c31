"""A back-off trigram language model in ARPA format, from counted phrases.

Each phrase is a sentence ``<s> w1 .. wn </s>`` seen ``count`` times. Probabilities use
absolute discounting: a seen n-gram gets ``(c(h, w) - D) / c(h)``; the mass taken away,
``D * distinct successors of h / c(h)``, goes to the lower order through the back-off
weight of ``h``, scaled so that the probabilities after ``h`` sum to one. Unigrams are
relative frequencies (``<s>`` is never predicted). The recognizer reads the ARPA text.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping

from common.speech.vocabulary import Phrase

ORDER = 3
DISCOUNT = 0.5
START, END = "<s>", "</s>"
_NEVER = -99.0


def ngram_counts(phrases: Mapping[Phrase, int]) -> list[Counter[Phrase]]:
    """Counts of the 1-, 2- and 3-grams of the phrases, each with its sentence markers."""
    counts: list[Counter[Phrase]] = [Counter() for _ in range(ORDER)]
    for phrase, count in phrases.items():
        sentence = (START, *phrase, END)
        for n in range(1, ORDER + 1):
            for i in range(len(sentence) - n + 1):
                counts[n - 1][sentence[i : i + n]] += count
    return counts


def arpa_model(phrases: Mapping[Phrase, int]) -> str:
    """The ARPA text of the model (``ValueError`` if there is no phrase)."""
    if not phrases:
        raise ValueError("a language model needs at least one phrase")
    counts = ngram_counts(phrases)
    prob = _probabilities(counts)
    backoff = _backoff_weights(counts, prob)
    lines = ["\\data\\", *(f"ngram {n + 1}={len(c)}" for n, c in enumerate(counts)), ""]
    for n, grams in enumerate(counts):
        lines.append(f"\\{n + 1}-grams:")
        for gram in sorted(grams):
            p = _NEVER if gram == (START,) else math.log10(prob[gram])
            line = f"{p:.4f} {' '.join(gram)}"
            if n + 1 < ORDER:
                line += f" {math.log10(backoff.get(gram, 1.0)):.4f}"
            lines.append(line)
        lines.append("")
    lines.append("\\end\\")
    return "\n".join(lines) + "\n"


def _probabilities(counts: list[Counter[Phrase]]) -> dict[Phrase, float]:
    unigrams = counts[0]
    total = sum(c for gram, c in unigrams.items() if gram != (START,))
    prob = {gram: c / total for gram, c in unigrams.items()}
    for grams in counts[1:]:
        history_total: Counter[Phrase] = Counter()
        for gram, c in grams.items():
            history_total[gram[:-1]] += c
        for gram, c in grams.items():
            prob[gram] = (c - DISCOUNT) / history_total[gram[:-1]]
    return prob


def _backoff_weights(
    counts: list[Counter[Phrase]], prob: dict[Phrase, float]
) -> dict[Phrase, float]:
    """For each history h: the mass left after h, over the lower-order mass of what was not
    seen after h (floored, so that a history followed by every word stays finite)."""
    followers: dict[Phrase, list[Phrase]] = defaultdict(list)
    for grams in counts[1:]:
        for gram in grams:
            followers[gram[:-1]].append(gram)
    weights = {}
    for history, following in followers.items():
        seen = sum(prob[g] for g in following)
        lower = sum(prob[g[1:]] for g in following)
        weights[history] = (1.0 - seen) / max(1.0 - lower, 1e-6)
    return weights
