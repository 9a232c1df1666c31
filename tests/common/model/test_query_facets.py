import numpy as np
import pytest

from common.model.query_facets import QueryFacets, candidate_matches, phrase_tokens

CATEGORIES = ["Casual Shoes", "Casual Shoes", "Tshirts", "Tshirts", "Watches", "Shirts"]
ATTRIBUTES = [
    {"baseColour": "Black", "gender": "Men", "usage": "Casual"},
    {"baseColour": "White", "gender": "Women", "usage": "Casual"},
    {"baseColour": "Black", "gender": "Men", "usage": "Sports"},
    {"baseColour": "Navy Blue", "gender": "Women", "usage": "Casual"},
    {"baseColour": "Black", "gender": "Men", "usage": "Casual", "subCategory": "Watches"},
    {"baseColour": "White", "gender": "Men", "usage": "Formal"},
]


@pytest.fixture
def facets() -> QueryFacets:
    built = QueryFacets.build(CATEGORIES, ATTRIBUTES)
    assert built is not None
    return built


def rows(mask: np.ndarray | None) -> list[int] | None:
    return None if mask is None else np.flatnonzero(mask).tolist()


def test_tokens_are_lower_case_words_in_singular_form():
    assert phrase_tokens("Black Casual-Shoes") == ("black", "casual", "shoe")
    assert phrase_tokens("dress glass bus") == ("dress", "glass", "bus")


def test_a_query_gets_the_items_that_have_every_facet_it_names(facets):
    assert rows(facets.match("black tshirts")) == [2]
    assert rows(facets.match("men casual shoes")) == [0]
    assert rows(facets.match("tshirt")) == [2, 3]
    assert rows(facets.match("navy blue tshirts")) == [3]


def test_the_longest_phrase_wins_and_uses_its_words_once(facets):
    # "casual shoes" is a category: "casual" is not also read as the usage value
    assert rows(facets.match("casual shoes")) == [0, 1]
    # "shirts" is not found inside "tshirts"
    assert rows(facets.match("shirts")) == [5]


def test_values_of_one_facet_are_alternatives_and_facets_across_hold_together(facets):
    assert rows(facets.match("black white casual shoes")) == [0, 1]
    # a phrase found in two facets (category and subCategory) matches either
    assert rows(facets.match("watches")) == [4]


def test_no_gate_when_the_query_names_nothing_or_no_item_has_it_all(facets):
    assert facets.match("something nice") is None
    assert facets.match("") is None
    assert facets.match("white watches") is None  # no white watch: no gate, not an empty one


def test_match_rows_keep_ungated_queries_open(facets):
    out = facets.match_rows(["black tshirts", "something nice"])
    assert out is not None and out.shape == (2, 6)
    assert rows(out[0]) == [2] and out[1].all()
    assert facets.match_rows(["nothing here"]) is None


def test_attributes_with_too_many_values_are_not_facets_but_categories_always_are():
    ids = [f"code {i}" for i in range(100)]
    facets = QueryFacets.build(ids, [{"serial": s} for s in ids])
    assert facets is not None and list(facets.codes) == ["category"]
    assert QueryFacets.build(["", ""], [{}, {}]) is None
    with pytest.raises(ValueError, match="2 categories for 1"):
        QueryFacets.build(["a", "b"], [{}])


def test_candidate_matches_builds_the_facets_from_the_candidates():
    assert rows(candidate_matches("black tshirts", CATEGORIES, ATTRIBUTES)) == [2]
    assert candidate_matches(None, CATEGORIES, ATTRIBUTES) is None
    assert candidate_matches("black tshirts", [], []) is None
