"""N-gram drafter proposals from the sequence itself and from its prompt group."""

from tlt.speculative.ngram import NgramDrafter


def test_proposes_what_followed_the_longest_earlier_match():
    d = NgramDrafter(max_n=3)
    assert d.propose("a", [5, 6, 7, 8, 9, 5, 6], 3) == [7, 8, 9]
    # the sequence grows: later calls see the new tokens
    assert d.propose("a", [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5], 2) == [6, 7]


def test_uses_earlier_responses_of_the_same_group_only():
    d = NgramDrafter(max_n=2)
    d.finish("first", [1, 2, 3, 4, 5], group="g")
    assert d.propose("second", [9, 3, 4], 2, group="g") == [5]
    assert d.propose("other", [9, 3, 4], 2, group="h") == []


def test_no_match_gives_no_proposal():
    assert NgramDrafter().propose("x", [1, 2, 3], 4) == []
