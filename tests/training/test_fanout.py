"""The fan-out LM stage: prompts, the parser, the rewards on a real index, and a GRPO smoke run."""

from __future__ import annotations

import json

import pytest

from service.parse import Fanout, parse_fanout
from service.prompts import PREFILL, example_queries, fanout_prompt
from training.fanout.rewards import RewardConfig, RewardModel


# --- prompts -------------------------------------------------------------------------------------

def test_prompts_follow_the_paper_per_task_and_domain():
    oar = fanout_prompt("late night drive", "oar", "mpd", think=True, example="paper")
    assert "diverse but cover the same topic" in oar and "search a music dataset" in oar
    assert "<think>" in oar and '"query1"' in oar and "<broad_query>late night drive</broad_query>" in oar
    wscr = fanout_prompt("office chic", "wscr", "polyvore")
    assert "to form an outfit" in wscr and "<think>" not in wscr and "camel wool coat" in wscr
    with pytest.raises(ValueError):
        fanout_prompt("x", "retrieve", "polyvore")


# --- parser --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('<think>plan [a]</think>\n<queries>["red dress", "Red  Dress ", "gold heels"]</queries>',
     ("red dress", "gold heels")),
    ('sure! <queries>\n["a", "b",]\n</queries> bye', ("a", "b")),  # trailing comma and stray text
    ('["a", 3, ["b"], "c"]', ("a", "c")),  # no tags; non-strings dropped
    ('<queries>["office chic", "OFFICE   chic", "blazer"]</queries>', ("blazer",)),  # the broad query is dropped
])
def test_parser_extracts_distinct_subqueries(text, expected):
    assert parse_fanout(text, "office chic") == Fanout(expected, True)


@pytest.mark.parametrize("text", ["", "no list here", '<queries>["unterminated', "{'a': 1}", '{"a": [1]', None,
                                 "[" * 5000])
def test_malformed_output_is_empty_and_flagged_never_raises(text):
    assert parse_fanout(text, "q") == Fanout((), False)


def test_parser_caps_at_k():
    completion = ", ".join(f'"item {i}"' for i in range(15))[1:] + "]</queries>"  # the prefill opened the quote
    out = parse_fanout(PREFILL + completion, "q", k=10)
    assert out.ok and out.queries == tuple(f"item {i}" for i in range(10))


# --- rewards on a real Polyvore slice ------------------------------------------------------------

GOOD = ["floral maxi dress", "fringe suede bag", "straw wide brim hat", "brown ankle boots", "denim shorts",
        "turquoise necklace", "crochet top", "round sunglasses", "gold bangles", "embroidered kimono"]


def _fanout(queries, broad="boho summer festival outfit"):
    return parse_fanout(json.dumps(queries), broad)


def test_echo_list_scores_below_a_good_varied_list(encoder, resolver):
    oar = RewardModel(encoder, resolver, RewardConfig(task="oar"))
    q = "boho summer festival outfit"
    echo, near_echo, good = oar.score([q] * 3, [_fanout([q] * 10), _fanout([q.upper(), f" {q} "] * 5), _fanout(GOOD)])
    assert echo.n_queries == near_echo.n_queries == 0 and good.n_queries == 10
    assert echo.total == pytest.approx(-0.5) and near_echo.total == echo.total  # shortfall penalty only
    assert good.total > 0.2 > echo.total
    assert 0.0 < good.diversity <= 1.0 and good.shortfall == 0.0 and good.format == 0.0


def test_diversity_is_normalised_by_k_and_short_lists_pay(encoder, resolver):
    oar = RewardModel(encoder, resolver, RewardConfig(task="oar"))
    full, short = oar.score(["boho"] * 2, [_fanout(GOOD), _fanout(GOOD[:3])])
    assert short.shortfall == pytest.approx(0.7) and short.diversity < full.diversity
    assert short.total < full.total


def test_nonsense_scores_low_alignment(encoder, resolver):
    oar = RewardModel(encoder, resolver, RewardConfig(task="oar"))
    nonsense = ["line ending line ending", "qwxz vbnm", "zzzz 1234", "asdf jkl;", "lorem ipsum dolor",
                "0x3f 0x4a", "%%%% ####", "tab tab tab", "xyzzy plugh", "null undefined NaN"]
    good, bad = oar.score(["boho summer festival outfit"] * 2, [_fanout(GOOD), _fanout(nonsense)])
    assert bad.alignment < 0.2 < good.alignment
    assert bad.total < good.total


def test_malformed_completion_pays_the_format_penalty(encoder, resolver):
    oar = RewardModel(encoder, resolver, RewardConfig(task="oar", format_penalty=0.5, shortfall_penalty=0.5))
    (r,) = oar.score(["boho"], [parse_fanout("I cannot help with that", "boho")])
    assert r.format == 1.0 and r.total == pytest.approx(-1.0)


def test_wscr_reward_is_recall_of_the_reference_in_the_union(polyvore, encoder, resolver):
    wscr = RewardModel(encoder, resolver, RewardConfig(task="wscr", depth=5))
    s = polyvore.sets[0]
    item_texts = [polyvore.items[i].text for i in s.item_ids]
    own, other = wscr.score([s.intent] * 2, [_fanout(item_texts, s.intent), _fanout(GOOD, s.intent)],
                            [s.item_ids, s.item_ids])
    # Each item's own text finds that item among its top 5, so the reference is (almost) fully recalled.
    assert own.recall >= 0.8 > other.recall
    assert own.total == pytest.approx(own.recall - 0.5 * own.shortfall)
    with pytest.raises(ValueError, match="reference"):
        wscr.score([s.intent], [_fanout(GOOD)])


def test_reward_config_weights():
    w = RewardConfig(task="oar").weights()
    assert (w["groundedness"], w["diversity"], w["alignment"], w["recall"]) == (0.6, 0.2, 0.2, 0.0)
    assert RewardConfig(task="wscr").weights()["recall"] == 1.0
    with pytest.raises(ValueError):
        RewardConfig(task="both")


def test_copying_the_prompts_worked_example_is_no_fanout():
    echo = example_queries("polyvore")
    copied = parse_fanout('<queries>["' + '", "'.join(echo) + '"]</queries>', "boho festival", 10, echo)
    assert copied == Fanout((), False)  # malformed: pays the format penalty and the full shortfall
    mixed = parse_fanout('<queries>["silk scarf", "fringe suede boots"]</queries>', "boho festival", 10, echo)
    assert mixed == Fanout(("fringe suede boots",), True)
    assert parse_fanout('["boho festival"]', "boho festival", 10, echo) == Fanout((), True)  # an echo of q
    music = example_queries("mpd")
    assert "road trip" in music  # the example's broad query is an echo as much as its sub-queries
    assert parse_fanout('["Road  Trip", "late night jazz"]', "chill", 10, music) == Fanout(("late night jazz",), True)
    assert parse_fanout('["road trip"]', "chill", 10, music) == Fanout((), False)
    assert example_queries("polyvore", "paper") == ()
