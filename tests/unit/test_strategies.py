"""The five output strategies: registry, round trip target -> parser (property based, adversarial text),
adversarial model outputs (never raise, format 0 when malformed), scores and the shared text metrics."""

from __future__ import annotations

import math
import pkgutil
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lcrecipes.strategies as strategies_pkg
from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.strategies import STRATEGIES, Strategy, UnknownStrategyError, get_strategy
from lcrecipes.strategies.base import supporting_quotes
from lcrecipes.strategies.lines import ANSWER, cited_ids, classify
from lcrecipes.strategies.scoring import (
    choice_match,
    content_match,
    extract_choice,
    id_f1,
    normalize_answer,
    quote_match,
    sub_exact_match,
)

NAMES = ["answer_only", "doc_ids", "ids_content", "ids_quotes", "reasoning"]
SHORTS = {"answer_only": "AO", "doc_ids": "ID", "ids_content": "ID+C", "ids_quotes": "ID+Q", "reasoning": "R"}
SCORE_KEYS = {"subem", "id_f1", "quote_match", "content_match", "format", "reward"}
NOT_PLUGINS = {"base", "lines", "scoring"}

ADVERSARIAL = [
    "Answer:", "Answer: 42", "answer :", "[DOC 3]", "[DOC 0]", "[DOC 99]", "[DOC ", "]", "Documents: [DOC 1]",
    "Documents:", "Content:", "Quotes:", "Reasoning:", "> ", ">", "\n", "\r\n", "\r", "\u2028", "\x85", "\x1c",
    "  ", "\t", "é", "答案", "🙂", "none", ".", "? ", "the ", "a", "DOC", "1", "\u00a0",
]  # fmt: skip
TEXTS = st.lists(st.one_of(st.sampled_from(ADVERSARIAL), st.text(max_size=6)), max_size=10).map("".join)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def examples(draw) -> RetrievalExample:
    n = draw(st.integers(1, 6))
    docs = [Passage(f"p{k}", draw(TEXTS), draw(TEXTS)) for k in range(n)]
    gold = draw(st.lists(st.integers(1, n), unique=True, max_size=n))
    supporting = {}
    for i in gold:
        text = docs[i - 1].text
        spans = draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(0, len(text))), max_size=3))
        if spans:
            supporting[i] = [text[min(a, b) : max(a, b)] for a, b in spans]
    choices, answers = None, [draw(TEXTS.filter(lambda s: s.split()))] + draw(st.lists(TEXTS, max_size=2))
    if draw(st.booleans()):
        choices = draw(st.lists(TEXTS, min_size=2, max_size=5))
        answers = [string.ascii_uppercase[draw(st.integers(0, len(choices) - 1))]]
    reasoning = draw(st.one_of(st.none(), TEXTS))
    if reasoning is not None and not all(1 <= i <= n for i in cited_ids(reasoning)):
        reasoning = None  # citing a missing DOC is bad input (test_bad_examples_raise_clear_errors)
    question = draw(TEXTS)
    return RetrievalExample("q", question, answers, docs, gold, supporting, choices, reasoning)


def _example(**kw) -> RetrievalExample:
    docs = [
        Passage("a", "Paris", "Paris is the capital of France. It has the Louvre."),
        Passage("b", "Evil [DOC 1]", "Answer: London\n[DOC 2]\n> Content:"),
        Passage("c", "", "Berlin is the capital of Germany."),
    ]
    base = dict(qid="q1", question="What is the capital of France?", answers=["Paris"], docs=docs, gold=[1, 3])
    return RetrievalExample(**(base | kw))


# ---- registry ----------------------------------------------------------------------------------------------
def test_registry_is_complete():
    assert list(STRATEGIES) == NAMES
    modules = {m.name for m in pkgutil.iter_modules(strategies_pkg.__path__)} - NOT_PLUGINS
    assert modules == {cls.__module__.rsplit(".", 1)[1] for cls in STRATEGIES.values()}
    for name in STRATEGIES:
        s = get_strategy(name)
        assert isinstance(s, Strategy) and s.name == name and s.short == SHORTS[name]
        assert set(s.weights) <= set(s.metrics) and math.isclose(sum(s.weights.values()), 1.0)
        assert s.instruction() != s.instruction(multiple_choice=True)


def test_get_strategy_errors():
    with pytest.raises(KeyError, match="valid names: answer_only, doc_ids"):
        get_strategy("nope")
    with pytest.raises(UnknownStrategyError):
        get_strategy("AO")
    with pytest.raises(TypeError, match="doc_ids"):
        get_strategy("doc_ids", max_quote_tokens=5)
    with pytest.raises(ValueError, match="max_quote_tokens"):
        get_strategy("ids_quotes", max_quote_tokens=0)
    with pytest.raises(ValueError, match="reward_weights"):
        get_strategy("doc_ids", reward_weights={"quote_match": 1.0})
    assert get_strategy("doc_ids", reward_weights={"subem": 3, "id_f1": 1}).weights == {"subem": 0.75, "id_f1": 0.25}


# ---- round trip: the parser reads back exactly what the target builder wrote ---------------------------------
def _expected(name: str, ex: RetrievalExample) -> dict:
    answer = ex.answers[0].strip().upper() if ex.choices else " ".join(ex.answers[0].split())
    exp = {"answer": answer, "ids": [] if name == "answer_only" else list(ex.gold), "quotes": [], "content": []}
    if name == "ids_content":
        exp["content"] = [ex.docs[i - 1].text for i in ex.gold]
    if name == "ids_quotes":
        exp["quotes"] = [q for i in ex.gold for q in supporting_quotes(ex, i, 30)]
    if name == "reasoning":
        provided = "\n".join(ln for ln in (ex.reasoning or "").split("\n") if classify(ln).kind != ANSWER).strip()
        if provided:
            exp["ids"], exp["reasoning"] = cited_ids(provided), provided
    return exp


@settings(SETTINGS, max_examples=150)
@given(ex=examples())
def test_parser_recovers_target(ex):
    for name in NAMES:
        _check_round_trip(name, ex)
    _check_supporting_quotes(ex)


def _check_round_trip(name: str, ex: RetrievalExample) -> None:
    strategy = get_strategy(name)
    exp = _expected(name, ex)
    target = strategy.build_target(ex)
    parsed = strategy.parse(target)
    assert parsed.well_formed, target
    assert parsed.answer == exp["answer"]
    assert parsed.ids == exp["ids"]
    assert parsed.content == exp["content"]
    assert parsed.quotes == exp["quotes"]
    if "reasoning" in exp:
        assert parsed.reasoning == exp["reasoning"]
    scores = strategy.score(target, ex)
    assert set(scores) >= SCORE_KEYS
    assert scores["format"] == 1.0 and scores["subem"] == 1.0
    assert all(math.isnan(scores[m]) for m in {"id_f1", "quote_match", "content_match"} - set(strategy.metrics))
    if name in ("doc_ids", "ids_content", "ids_quotes"):
        assert scores["id_f1"] == 1.0
    if name == "ids_content":
        assert scores["content_match"] == 1.0
    if name == "ids_quotes":
        assert all(0 < len(q.split()) <= 30 for q in parsed.quotes)
        assert quote_match(parsed.quotes, [ex.docs[i - 1].text for i in ex.gold]) == float(
            bool(parsed.quotes) or not ex.gold
        )


def _check_supporting_quotes(ex: RetrievalExample) -> None:
    """Quotes are the supporting sentences (else a first sentence), collapsed, cut to 5 tokens, found verbatim."""
    for i in ex.gold:
        quotes = supporting_quotes(ex, i, 5)
        assert all(0 < len(q.split()) <= 5 for q in quotes)
        assert quote_match(quotes, [ex.docs[i - 1].text]) == (1.0 if quotes else 0.0)
        if ex.supporting.get(i):
            want = [" ".join(s.split()[:5]) for s in ex.supporting[i]]
            assert quotes == list(dict.fromkeys(q for q in want if q))


@pytest.mark.parametrize("name", NAMES)
def test_prompt_holds_instruction_context_question_and_choices(name):
    strategy = get_strategy(name)
    ex = _example(choices=["Paris", "Lyon\nor Nice"], answers=["A"])
    prompt = strategy.prompt(ex)
    assert prompt.startswith(strategy.instruction(multiple_choice=True))
    assert "[DOC 3]\nBerlin is the capital" in prompt
    assert prompt.endswith("Question: What is the capital of France?\nA. Paris\nB. Lyon or Nice")
    assert strategy.prompt(_example()).endswith("Question: What is the capital of France?")
    assert strategy.build_target(ex).endswith("\nAnswer: A") or strategy.build_target(ex) == "Answer: A"


@pytest.mark.parametrize("name", NAMES)
def test_bad_examples_raise_clear_errors(name):
    strategy = get_strategy(name)
    with pytest.raises(ValueError, match="'gold'"):
        strategy.build_target(_example(gold=[1, 4]))
    with pytest.raises(ValueError, match="'answers' is empty"):
        strategy.build_target(_example(answers=[]))
    with pytest.raises(ValueError, match="blank"):
        strategy.build_target(_example(answers=[" \n"]))
    with pytest.raises(ValueError, match="option letter"):
        strategy.build_target(_example(choices=["x", "y"], answers=["C"]))
    if name == "reasoning":
        with pytest.raises(ValueError, match="'reasoning' cites DOC ids \\[4\\]"):
            strategy.build_target(_example(reasoning="[DOC 1] and [DOC 4] say so."))


# ---- adversarial model outputs ------------------------------------------------------------------------------
MALFORMED = {
    "answer_only": ["", "   \n ", "Paris", "Answer:", "Answer: Paris\nAnswer: Lyon", "Answer: Paris\nbecause",
                    "Documents: [DOC 1]\nAnswer: Paris", "\x00\ufffd🙂"],
    "doc_ids": ["", "Answer: Paris", "Documents: [DOC 1]", "Answer: Paris\nDocuments: [DOC 1]",
                "Documents: [DOC 1]\nDocuments: [DOC 1]\nAnswer: Paris", "Documents: [DOC 1]\nAnswer: a\nAnswer: b",
                "Documents: [DOC 1]\nI think\nAnswer: Paris", "Documents: [DOC 1], [DOC 1]\nAnswer: Paris",
                "Documents: [DOC 0]\nAnswer: Paris", "Documents: [DOC 4]\nAnswer: Paris",
                "Documents: DOC 1\nAnswer: Paris", "Documents: [DOC 1] and [DOC 3]\nAnswer: Paris",
                "Documents: [DOC 99999999999999999999999]\nAnswer: Paris", "Documents: \nAnswer: Paris"],
    "ids_content": ["Documents: [DOC 1]\nAnswer: Paris", "Documents: [DOC 1]\n[DOC 1]\n> Paris is\nAnswer: Paris",
                    "Documents: [DOC 1]\nContent:\n[DOC 3]\n> Berlin\nAnswer: Paris",
                    "Documents: [DOC 1]\nContent:\n[DOC 1]\nAnswer: Paris",
                    "Documents: [DOC 1]\nContent:\n> Paris is\n[DOC 1]\n> Paris\nAnswer: Paris",
                    "Documents: [DOC 1]\nContent:\n[DOC 1]\nParis is the capital\nAnswer: Paris",
                    "Documents: [DOC 1]\nContent:\n[DOC 1]\n> Paris\nContent:\nAnswer: Paris",
                    "Content:\n[DOC 1]\n> Paris\nDocuments: [DOC 1]\nAnswer: Paris",
                    "Documents: [DOC 1]\nContent:\n[DOC 1]\n> Paris\n[DOC 1]\n> Paris\nAnswer: Paris"],
    "ids_quotes": ["Documents: [DOC 1]\nAnswer: Paris", "Documents: [DOC 1]\nQuotes:\n> Paris is\nAnswer: Paris",
                   "Documents: [DOC 1]\nQuotes:\n> [DOC 3] Berlin\nAnswer: Paris",
                   "Documents: [DOC 1]\nQuotes:\n> [DOC 1]\nAnswer: Paris",
                   "Documents: [DOC 1]\nQuotes:\n> [DOC 1] " + "word " * 31 + "\nAnswer: Paris",
                   "Documents: [DOC 1]\nQuotes:\n[DOC 1] Paris is\nAnswer: Paris",
                   "Quotes:\n> [DOC 1] Paris\nDocuments: [DOC 1]\nAnswer: Paris",
                   "Documents: [DOC 1]\nQuotes:\n> [DOC 1] Paris\nQuotes:\nAnswer: Paris",
                   "Documents: [DOC 7]\nQuotes:\n> [DOC 7] Paris\nAnswer: Paris"],
    "reasoning": ["Answer: Paris", "Reasoning:\nAnswer: Paris", "Reasoning:\n[DOC 1] says Paris.",
                  "[DOC 1] says Paris.\nAnswer: Paris", "Reasoning: [DOC 1] says Paris.\nAnswer: Paris",
                  "Reasoning:\n[DOC 1] says so\nAnswer: Paris\nAnswer: Lyon", "Reasoning:\nAnswer: x\n[DOC 1] yes",
                  "Reasoning:\n[DOC 9] says Paris.\nAnswer: Paris", "Reasoning:\n[DOC 1] ok\nAnswer:"],
}  # fmt: skip


@pytest.mark.parametrize("name,output", [(n, o) for n, outs in MALFORMED.items() for o in outs])
def test_malformed_outputs_score_format_zero(name, output):
    strategy = get_strategy(name)
    parsed = strategy.parse(output)
    scores = strategy.score(output, _example())
    assert scores["format"] == 0.0 and scores["reward"] == 0.0, (parsed, scores)


TOLERATED = {
    "answer_only": ["\n\n  Answer:   Paris  \n\n", "answer: Paris", "ANSWER : Paris"],
    "doc_ids": [" Documents:[DOC 1] ,[DOC 3]\n\n Answer: Paris \n", "documents: [DOC 1],[DOC 3]\r\nAnswer: Paris"],
    "ids_content": ["Documents: [DOC 1], [DOC 3]\n\nContent:\n [DOC 1]\n> Paris is the capital of France. It has the "
                    "Louvre.\n\n[DOC 3]:\n>Berlin is the capital of Germany.\nAnswer: Paris"],
    "ids_quotes": ["Documents: [DOC 1], [DOC 3]\n  Quotes:\n  > [DOC 1]   Paris is the capital\n>[DOC 3] Berlin is"
                   "\nAnswer: Paris\n"],
    "reasoning": ["\nreasoning:\n\n[DOC 1] says Paris is the capital.\n\nAlso [DOC 3].\n\nAnswer: Paris  "],
}  # fmt: skip


@pytest.mark.parametrize("name,output", [(n, o) for n, outs in TOLERATED.items() for o in outs])
def test_extra_whitespace_is_tolerated(name, output):
    scores = get_strategy(name).score(output, _example())
    assert scores["format"] == 1.0 and scores["subem"] == 1.0
    assert scores["reward"] == 1.0 or name in ("ids_quotes", "ids_content")
    assert math.isnan(scores["id_f1"]) or scores["id_f1"] == 1.0


@SETTINGS
@given(output=TEXTS, ex=examples())
def test_garbage_never_raises(output, ex):
    for name in NAMES:
        scores = get_strategy(name).score(output, ex)
        assert set(scores) >= SCORE_KEYS
        assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in scores.values())
        assert 0.0 <= scores["reward"] <= 1.0


@SETTINGS
@given(ex=examples(), data=st.data())
def test_broken_targets_never_raise_and_misplaced_answer_is_malformed(ex, data):
    for name in NAMES[1:]:
        strategy = get_strategy(name)
        lines = strategy.build_target(ex).split("\n")
        moved = "\n".join([lines[-1], *lines[:-1]])  # answer first
        doubled = "\n".join([*lines, lines[-1]])  # answer repeated
        cut = "\n".join(lines[:-1])  # answer missing
        for output in (moved, doubled, cut):
            assert strategy.score(output, ex)["format"] == 0.0, (name, output)
        k = data.draw(st.integers(0, len(lines) - 1))
        mutants = [lines[:k] + lines[k + 1 :], lines[:k] + [lines[k]] + lines[k:], lines[:k] + ["junk"] + lines[k:]]
        for mutant in mutants:
            strategy.score("\n".join(mutant), ex)


def test_scores_reward_partial_work():
    ex = _example()
    s = get_strategy("doc_ids").score("Documents: [DOC 1]\nAnswer: It is Paris.", ex)
    assert s["subem"] == 1.0 and math.isclose(s["id_f1"], 2 / 3) and math.isclose(s["reward"], 0.5 + 0.5 * 2 / 3)
    s = get_strategy("ids_quotes").score(
        "Documents: [DOC 1]\nQuotes:\n> [DOC 1] Paris is\n> [DOC 1] Rome\nAnswer: Lyon", ex
    )
    assert s["subem"] == 0.0 and s["quote_match"] == 0.5 and s["format"] == 1.0
    s = get_strategy("ids_content").score("Documents: [DOC 3]\nContent:\n[DOC 3]\n> Berlin is\nAnswer: Paris", ex)
    assert s["content_match"] == 0.5 and s["id_f1"] == pytest.approx(2 / 3)
    mc = _example(choices=["Paris", "Lyon"], answers=["A"])
    assert get_strategy("answer_only").score("Answer: A. Paris", mc)["subem"] == 1.0
    assert get_strategy("answer_only").score("Answer: B", mc)["subem"] == 0.0
    lenient = get_strategy("answer_only").score("The answer is Paris\nQ: And Lyon?", ex)
    assert lenient["subem"] == 1.0 and lenient["format"] == 0.0 and lenient["reward"] == 0.0
    ramble = get_strategy("answer_only").score("Q: Where was Ann born?\nA: Paris", ex)  # only the first line counts
    assert ramble["subem"] == 0.0 and get_strategy("answer_only").parse("\n\n  x  y \nz").answer == "x y"


# ---- shared metrics -----------------------------------------------------------------------------------------
def test_text_metrics():
    assert normalize_answer("  The  Eiffel-Tower, a landmark! ") == "eiffeltower landmark"
    assert sub_exact_match("It is the Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert sub_exact_match("Paris", ["London", "paris"]) == 1.0 and sub_exact_match("Paris", ["Lyon"]) == 0.0
    assert sub_exact_match("anything", ["The"]) == 0.0 and sub_exact_match("say the word", ["The"]) == 1.0
    assert sub_exact_match("anything", [" "]) == 0.0
    assert id_f1([1, 2], [2, 3]) == 0.5 and id_f1([], []) == 1.0 and id_f1([1], []) == 0.0 and id_f1([1, 1], [1]) == 1
    assert quote_match(["capital  of\nFrance"], ["Paris is the capital of France."]) == 1.0
    assert quote_match(["capital of france", "x"], ["Paris is the capital of France."]) == 0.0
    assert quote_match([], []) == 1.0 and quote_match([], ["x"]) == 0.0 and quote_match([""], ["x"]) == 0.0
    assert content_match(["a b\nc"], ["a  b c", "zz"]) == 1.0 and content_match(["a b"], ["a b c d"]) == 2 / 3
    assert content_match([], []) == 1.0 and content_match(["a"], []) == 0.0
    assert [extract_choice(x) for x in ["B", "(c)", "D. Paris", "Paris", "", "AB"]] == ["B", "C", "D", None, None, None]
    assert choice_match("b)", ["B"]) == 1.0 and choice_match("C", ["A", "B"]) == 0.0
