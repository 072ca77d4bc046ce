"""The generate mode's sentence check, fed text the way a model streams it (pure plumbing: no model here; the
same check with the real model is in tests/test_answer.py)."""

from __future__ import annotations

from rag.grounding import backs, negated
from rag.modes import MODES, Pending, SentenceChecker

SOURCES = [
    (0, "Gini impurity measures how often a randomly chosen sample would be misclassified."),
    (0, "A pure node has Gini impurity 0."),
    (1, "The most accurate model is not always the right choice for a production system."),
]


def run(pieces: list[str]) -> tuple[str, list[str], SentenceChecker]:
    checker = SentenceChecker(SOURCES)
    answer, pending = "", []
    for piece in pieces:
        for out in checker.feed(piece):
            if isinstance(out, Pending):
                pending.append(out.text)
            else:
                answer += out
    for out in checker.finish():
        if not isinstance(out, Pending):
            answer += out
    return answer, pending, checker


def tokens(text: str) -> list[str]:
    """The text in small pieces, as a streamer hands them out."""
    return [text[i:i + 4] for i in range(0, len(text), 4)]


def test_a_faithful_sentence_is_kept_as_written_and_cited_to_its_passage():
    answer, pending, checker = run(tokens("Gini impurity measures how often a random sample would be "
                                          "misclassified [1]. A pure node has a Gini impurity of 0 [2]."))
    assert answer == ("Gini impurity measures how often a random sample would be misclassified. [1] "
                      "A pure node has a Gini impurity of 0. [1]")
    assert checker.kept == 2
    # while a sentence is being written it is pending, without its marker; then it moves into the answer
    assert any(p.startswith("Gini impurity measures how often a random") for p in pending)
    assert not any("[" in p for p in pending) and pending[-1] == "A pure node has a Gini impurity of 0."
    assert checker.draft.startswith("Gini impurity measures how often")


def test_a_flipped_negation_is_replaced_by_the_source_sentence():
    assert negated("is not always the right choice") and not negated("is always the right choice")
    assert not backs(SOURCES[2][1], "The most accurate model is always the right choice for a production system.")
    answer, _, checker = run(tokens("The most accurate model is always the right choice for a production "
                                    "system [3]."))
    assert answer == "The most accurate model is not always the right choice for a production system. [2]"
    assert checker.kept == 0


def test_an_invented_sentence_is_dropped_and_a_source_is_used_once():
    answer, _, _ = run(tokens("Bagging uses bootstrap samples to train neural networks on GPUs [1]. "
                              "A pure node has Gini impurity 0 [2]. A pure node has Gini impurity zero [2]."))
    assert answer == "A pure node has Gini impurity 0. [1]"


def test_modes_are_registered_with_what_the_app_offers():
    assert {"generate", "extractive"} <= {name for name, m in MODES.items() if m.offered}
    assert MODES["generate"].uses_generator and not MODES["extractive"].uses_generator
    assert not MODES["free"].offered  # it invents content: eval only
