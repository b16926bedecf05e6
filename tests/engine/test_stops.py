"""Stop strings across token boundaries (never emitted, held back while they may still complete)."""

import random

import pytest

from cortex_jax.engine.stops import StopStringFilter, token_stop


def _run(pieces, stops):
    f = StopStringFilter(stops)
    out = []
    for p in pieces:
        text, hit = f.push(p)
        out.append(text)
        if hit is not None:
            out.append(hit.text)
            return "".join(out), hit.stop
    out.append(f.flush())
    return "".join(out), None


def _reference(text, stops):
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return text, None
    i, s = min(hits)
    return text[:i], s


@pytest.mark.parametrize("seed", range(200))
def test_random_splits_match_reference(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 40)))
    stops = ["".join(rng.choice("abc ") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 10))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert _run(pieces, stops) == _reference(text, stops)


def test_holds_back_prefix_then_releases_it():
    f = StopStringFilter(["</end>"])
    assert f.push("hello </") == ("hello ", None)  # "</" may start the stop string
    assert f.push("en") == ("", None)
    assert f.push("x more") == ("</enx more", None)  # it did not: released


def test_stop_spanning_tokens_is_not_emitted():
    f = StopStringFilter(["STOP"])
    assert f.push("abcST") == ("abc", None)
    text, hit = f.push("OPxyz")
    assert text == "" and hit.text == "" and hit.stop == "STOP"


def test_earliest_stop_wins_and_no_stops_passes_through():
    assert _run(["xx bb aa"], ["aa", "bb"]) == ("xx ", "bb")
    f = StopStringFilter([])
    assert f.push("anything") == ("anything", None)


def test_token_stop():
    eos = frozenset({7})
    assert token_stop(7, eos, frozenset(), ignore_eos=False)
    assert not token_stop(7, eos, frozenset(), ignore_eos=True)
    assert token_stop(3, eos, frozenset({3}), ignore_eos=True)
