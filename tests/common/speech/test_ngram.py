import math
from collections import Counter

import pytest

from common.speech.ngram import arpa_model, ngram_counts


def read_arpa(text: str) -> tuple[dict, dict, dict]:
    """(declared counts, log10 probabilities, log10 back-off weights) by n-gram."""
    declared, prob, backoff = {}, {}, {}
    order = 0
    for line in text.splitlines():
        if line.startswith("ngram "):
            n, count = line.removeprefix("ngram ").split("=")
            declared[int(n)] = int(count)
        elif line.endswith("-grams:"):
            order = int(line[1])
        elif order and line.strip() and not line.startswith("\\"):
            fields = line.split()
            gram = tuple(fields[1 : 1 + order])
            prob[gram] = float(fields[0])
            if len(fields) > 1 + order:
                backoff[gram] = float(fields[1 + order])
    return declared, prob, backoff


def conditional(word: str, history: tuple, prob: dict, backoff: dict) -> float:
    """P(word | history) under the back-off model."""
    gram = (*history, word)
    if gram in prob:
        return 10 ** prob[gram]
    return 10 ** backoff.get(history, 0.0) * conditional(word, history[1:], prob, backoff)


PHRASES = Counter(
    {
        ("black", "casual", "shoes"): 3,
        ("black", "watches"): 2,
        ("casual", "shoes", "for", "men"): 1,
        ("watches", "for", "women"): 1,
        ("black",): 1,
    }
)


def test_the_model_declares_what_it_lists():
    declared, prob, _ = read_arpa(arpa_model(PHRASES))
    counts = ngram_counts(PHRASES)
    assert declared == {n + 1: len(c) for n, c in enumerate(counts)}
    assert sum(len(g) == 1 for g in prob) == declared[1] and prob[("<s>",)] == -99.0
    assert counts[2][("<s>", "black", "casual")] == 3


@pytest.mark.parametrize(
    "history", [(), ("black",), ("<s>", "black"), ("casual", "shoes"), ("for",), ("men",)]
)
def test_probabilities_after_any_history_sum_to_one(history):
    _, prob, backoff = read_arpa(arpa_model(PHRASES))
    words = [g[0] for g in prob if len(g) == 1 and g[0] != "<s>"]
    total = sum(conditional(w, history, prob, backoff) for w in words)
    assert math.isclose(total, 1.0, abs_tol=2e-3)


def test_seen_continuations_beat_unseen_ones():
    _, prob, backoff = read_arpa(arpa_model(PHRASES))
    after = ("<s>", "black")
    assert conditional("casual", after, prob, backoff) > conditional("men", after, prob, backoff)


def test_no_phrase_is_an_error():
    with pytest.raises(ValueError, match="at least one phrase"):
        arpa_model(Counter())
