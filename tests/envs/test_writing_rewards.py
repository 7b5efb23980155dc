"""Known-answer tests of the published writing rewards and our individual rewards (values by hand)."""

from __future__ import annotations

import pytest

from llm_coop_envs.abstract_expansion import abstract_expansion_levels
from llm_coop_envs.summarisation import summarisation_levels
from llm_coop_envs.writing import (
    OwnTextRubric,
    jaccard,
    normalised_writing_metrics,
    own_text_reward,
    transition_categories_present,
    transition_scale,
    unique_words,
)

C1 = "alpha beta gamma delta epsilon zeta eta theta"  # 8 tokens, 45 characters, U = 8, no transitions


def distinct(n_tokens: int, width: int = 9, prefix: str = "token") -> str:
    """n distinct tokens of `width` characters, e.g. 'token0001' (no transition phrase inside)."""
    return " ".join(f"{prefix}{i:0{width - len(prefix)}d}" for i in range(n_tokens))


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-9)


# ---------------------------------------------------------------- building blocks
def test_transition_scale() -> None:
    assert [transition_scale(k) for k in (0, 1, 2, 4, 12, 30)] == [0.0, 0.4, 0.45, approx(0.55), approx(0.95), 1.0]


def test_transition_substring_quirk() -> None:
    # "so" inside "also" counts as cause_effect; "if" inside "fifteen" counts as condition.
    assert transition_categories_present("also") == ["elaboration", "cause_effect"]
    assert transition_categories_present("fifteen") == ["condition"]
    assert transition_categories_present("FINALLY") == ["sequence", "time"]
    assert transition_categories_present("zzz") == []


def test_unique_words_keep_stopwords_and_jaccard_drops_them() -> None:
    assert unique_words("The the THE cat, cat!") == 2
    assert jaccard("the a of", "and to") == 1.0  # both empty after stopwords
    assert jaccard("cat dog", "cat bird") == approx(1 / 3)


# ---------------------------------------------------------------- summarisation (TLDR) reward
def test_tldr_full_example() -> None:
    c1 = "The cat sat on the warm mat today"  # 8 tokens, 33 chars, W = {the, cat, sat, on, warm, mat, today}
    c2 = "A cat also napped near fifteen green plants beside windows during cold grey winter mornings"
    # 15 tokens, 91 chars: rho = 2.7576 -> L2 = 1; U = 15, u = 15/7 -> L3 = 0.5
    # transitions: also (elaboration), "so" in also (cause_effect), "if" in fifteen (condition),
    # during (time) -> k = 4 -> T = 0.55 -> 0.22
    # content words: {cat, sat, warm, mat, today} vs 13 words sharing "cat" -> J = 1/17 >= 0.03 -> 0.6
    levels = summarisation_levels(c1, c2)
    assert levels["rho"] == approx(91 / 33)
    assert levels["transition_categories"] == 4
    assert levels["jaccard"] == approx(1 / 17)
    assert (levels["level1"], levels["level2"], levels["level3"]) == (0.5, 1.0, 0.5)
    assert levels["transition_part"] == approx(0.22) and levels["jaccard_part"] == approx(0.6)
    assert levels["total"] == approx(2.82) and levels["stopped_at"] == 0
    metrics = normalised_writing_metrics(levels)
    assert metrics == {"structure": 1.0, "style": approx(1.0), "coherence": approx(0.55), "return": approx(0.94)}


def test_tldr_level1_gate_and_boundaries() -> None:
    seven = "one two three four five six seven"
    assert summarisation_levels(seven, distinct(20))["total"] == 0.0
    assert summarisation_levels(seven, distinct(20))["stopped_at"] == 1
    assert summarisation_levels(C1, distinct(257))["stopped_at"] == 1
    # 256 tokens passes level 1; rho = (256*9+255)/45 = 56.9 > 5 -> stop at level 2 with 0.5
    assert summarisation_levels(C1, distinct(256))["level1"] == 0.5
    assert summarisation_levels(C1, distinct(256))["total"] == 0.5


def test_tldr_lower_ramp_and_level3_ramp() -> None:
    c2 = "one two three four five six seven eight nine ten eleven twelve"  # 62 chars, U = 12
    levels = summarisation_levels(C1, c2)
    # rho = 62/45 -> L2 = (62/45 - 1.1) / 0.5; u = 12/8 = 1.5 -> L3 = 0.5 * 0.2 / 0.7; k = 0; J = 0
    assert levels["level2"] == approx((62 / 45 - 1.1) / 0.5)
    assert levels["level3"] == approx(0.5 * 0.2 / 0.7)
    assert levels["level4"] == 0.0
    assert levels["total"] == approx(0.5 + (62 / 45 - 1.1) / 0.5 + 0.5 * 0.2 / 0.7)


def test_tldr_upper_ramp() -> None:
    c2 = distinct(15)  # 15 * 9 + 14 = 149 chars -> rho = 149/45 = 3.3111 -> L2 = 1 - 0.1111/1.8
    levels = summarisation_levels(C1, c2)
    assert levels["level2"] == approx(1 - (149 / 45 - 3.2) / 1.8)
    assert levels["level3"] == approx(0.5 * (15 / 8 - 1.3) / 0.7)
    assert levels["total"] == approx(0.5 + 1 - (149 / 45 - 3.2) / 1.8 + 0.5 * (15 / 8 - 1.3) / 0.7)


@pytest.mark.parametrize(
    ("c2_chars", "level2", "stopped_at"),
    [(49, None, 2), (72, 1.0, None), (144, 1.0, None), (225, 0.0, None), (226, None, 2)],
)
def test_tldr_rho_boundaries(c2_chars: int, level2: float | None, stopped_at: int | None) -> None:
    # 8 tokens of distinct letters padded to c2_chars characters in total (c1 has 45 characters)
    words = [chr(ord("a") + i) * 2 for i in range(16)]
    c2 = " ".join(words)  # 16 tokens, 47 chars
    c2 = c2 + "x" * (c2_chars - len(c2)) if c2_chars >= len(c2) else c2[:c2_chars]
    levels = summarisation_levels(C1, c2)
    if level2 is None:
        assert levels["stopped_at"] == stopped_at and levels["total"] == 0.5
    else:
        assert levels["level2"] == approx(level2) and levels["level1"] == 0.5


def test_tldr_level3_gate() -> None:
    c2 = " ".join(["alpha beta gamma delta"] * 20)  # rho = 459/45 > 5 -> stop at level 2
    assert summarisation_levels(C1, c2)["stopped_at"] == 2
    c2 = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 2  # 20 tokens, U = 10, u = 1.25
    levels = summarisation_levels(C1, c2.strip())
    assert levels["stopped_at"] == 3 and levels["total"] == approx(0.5 + levels["level2"])


def test_tldr_jaccard_below_cap() -> None:
    shared = "alpha"
    c2 = " ".join([shared] + [f"w{i:03d}" for i in range(17)])  # content: 18 words, 1 shared with c1's 8
    levels = summarisation_levels(C1, c2)
    # J = 1 / (8 + 18 - 1) = 0.04 >= 0.03 -> capped at 0.6; with 40 extra words J = 1/48 < 0.03
    assert levels["jaccard_part"] == approx(0.6)
    c2 = " ".join([shared] + [f"w{i:02d}" for i in range(40)])
    levels = summarisation_levels(C1, c2)
    assert levels["jaccard"] == approx(1 / 48)
    assert levels["jaccard_part"] == approx(0.6 * (1 / 48) / 0.03)


# ---------------------------------------------------------------- abstract expansion (arXiv) reward
def test_arxiv_full_example_with_shared_words() -> None:
    c1 = distinct(128, prefix="a")
    c2 = " ".join(c1.split()[:32] + distinct(96, prefix="b").split())
    # equal lengths -> rho 1 -> L2 = 1; u = 1 -> L3 = 0.5; k = 0; J = 32 / 224 -> 0.6 * (1/7) / 0.23
    levels = abstract_expansion_levels(c1, c2)
    assert (levels["level1"], levels["level2"], levels["level3"]) == (0.5, 1.0, 0.5)
    assert levels["jaccard"] == approx(1 / 7)
    assert levels["jaccard_part"] == approx(0.6 * (1 / 7) / 0.23)
    assert levels["total"] == approx(2.0 + 0.6 * (1 / 7) / 0.23)


def test_arxiv_gate_and_ramps() -> None:
    assert abstract_expansion_levels(distinct(127), distinct(200))["stopped_at"] == 1
    assert abstract_expansion_levels(distinct(128), distinct(257))["stopped_at"] == 1
    c1 = distinct(150)  # 1499 chars
    # rho = 0.9 -> L2 = 0.5: c2 must have 1349.1 chars; use 135 tokens (1349 chars) -> rho = 1349/1499
    levels = abstract_expansion_levels(c1, distinct(135))
    assert levels["level2"] == approx((1349 / 1499 - 0.8) / 0.2)
    assert levels["level3"] == 0.5  # u = 135/150 = 0.9
    levels = abstract_expansion_levels(distinct(128), distinct(180))  # rho = 1799/1279 = 1.4066, u = 1.406
    assert levels["level2"] == approx(1 - (1799 / 1279 - 1.3) / 0.2)
    assert levels["level3"] == approx(0.5 * (1 - (180 / 128 - 1.3) / 0.4))
    assert abstract_expansion_levels(distinct(128), distinct(200))["stopped_at"] == 2  # rho 1.56


def test_arxiv_level3_lower_ramp_and_stop() -> None:
    c1 = distinct(200)  # 1999 chars, U = 200
    c2 = " ".join(distinct(120, width=12).split() + distinct(120, width=12).split()[:40])  # U = 120, 160 tokens
    levels = abstract_expansion_levels(c1, c2)
    # rho = (160*12+159)/1999 = 2079/1999 = 1.04 -> L2 = 1; u = 120/200 = 0.6 -> L3 = 0.5 * 0.1 / 0.2
    assert levels["level2"] == 1.0 and levels["level3"] == approx(0.25)
    c2 = " ".join(distinct(90, width=12).split() + distinct(90, width=12).split()[:70])  # u = 0.45 -> stop
    assert abstract_expansion_levels(c1, c2)["stopped_at"] == 3


def test_arxiv_transitions_counted_on_both_parts() -> None:
    c1 = "however " + distinct(127)
    c2 = "finally " + distinct(127)
    # contrast + concession from c1, sequence + time from c2 -> k = 4 -> 0.4 * 0.55
    assert abstract_expansion_levels(c1, c2)["transition_part"] == approx(0.22)
    # no phrase across the seam: "whe" + "n..." does not form "when"
    seam = abstract_expansion_levels(distinct(127) + " whe", "n " + distinct(127))
    assert seam["transition_categories"] == 0


# ---------------------------------------------------------------- individual rewards
def test_own_text_reward_known_answer() -> None:
    text = "cats love warm sunny windows every single afternoon"
    source = "My cats love sitting by warm windows. They nap there."
    # grounding 4/8, coverage min(4/6/0.5, 1) = 1, diversity 1, transitions: "after" -> k = 1 -> 0.4
    summary = OwnTextRubric(8, 64, grounding=1.5, coverage=1.0, diversity=0.0, transitions=0.0)
    assert own_text_reward(text, source, summary) == approx(0.5 + 1.5 * 0.5 + 1.0)
    generic = OwnTextRubric(1, 100, grounding=1.0, coverage=0.5, diversity=0.5, transitions=0.5)
    assert own_text_reward(text, source, generic) == approx(0.5 + 0.5 + 0.5 + 0.5 + 0.2)
    assert own_text_reward("too short", source, summary) == 0.0


def test_rubric_weights_must_sum_to_2_5() -> None:
    with pytest.raises(ValueError, match="sum to 2.5"):
        OwnTextRubric(1, 2, grounding=1.0, coverage=1.0, diversity=1.0, transitions=1.0)
