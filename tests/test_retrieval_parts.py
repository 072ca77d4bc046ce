"""The small parts of retrieval with known values: fusion arithmetic, min-max, section assembly, overlap joining,
the follow-up decision, the coverage vocabulary and query spelling. No model is loaded here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from rag.chunking import Chunk
from rag.conversation import QuestionError, check_history, check_k, follow_up, has_pronoun
from rag.coverage import CoverageModel, Vocabulary, features
from rag.errors import RagError
from rag.fusion import FUSIONS, get_fusion, minmax, ranks
from rag.retrieve import Passage, _section_text, join_overlapping, spell_out
from rag.text import content_words, stems, words

SETTINGS = SimpleNamespace(dense_weight=0.6, rrf_k=60)


def test_minmax_and_ranks():
    assert minmax({1: 2.0, 2: 4.0, 3: 3.0}) == {1: 0.0, 2: 1.0, 3: 0.5}
    assert minmax({7: 0.3}) == {7: 1.0} and minmax({}) == {}
    assert minmax({1: 5.0, 2: 5.0}) == {1: 1.0, 2: 1.0}
    assert ranks({"a": 0.1, "b": 0.9, "c": 0.5}) == {"b": 0, "c": 1, "a": 2}


def test_convex_fusion_mixes_normalised_dense_and_bm25():
    dense, keyword = {1: 0.8, 2: 0.6}, {2: 10.0, 3: 4.0}
    cos = {1: 0.8, 2: 0.6, 3: 0.4}  # every candidate's cosine, keyword-only hits included
    fused = FUSIONS["convex"].fuse(dense, keyword, cos, SETTINGS)
    # cos min-max: 1 -> 1.0, 2 -> 0.5, 3 -> 0.0; bm25 min-max: 2 -> 1.0, 3 -> 0.0, 1 absent -> 0
    assert fused == pytest.approx({1: 0.6, 2: 0.6 * 0.5 + 0.4, 3: 0.0})


def test_reciprocal_rank_fusion_sums_one_over_k_plus_rank():
    dense, keyword = {1: 0.9, 2: 0.5}, {2: 3.0, 3: 1.0}
    fused = FUSIONS["rrf"].fuse(dense, keyword, {1: 0.9, 2: 0.5, 3: 0.1}, SETTINGS)
    assert fused[1] == pytest.approx(1 / 60)
    assert fused[2] == pytest.approx(1 / 61 + 1 / 60)
    assert fused[3] == pytest.approx(1 / 61)
    assert FUSIONS["dense"].fuse(dense, keyword, {}, SETTINGS) == dense
    assert FUSIONS["bm25"].fuse(dense, keyword, {}, SETTINGS) == keyword
    with pytest.raises(RagError, match="unknown fusion 'rfr'; one of convex, rrf, dense, bm25"):
        get_fusion("rfr")


def test_join_overlapping_drops_the_repeated_overlap():
    a = "Bagging trains each tree on a bootstrap sample of the data."
    b = "a bootstrap sample of the data. Then the trees vote."
    assert join_overlapping([a, b]) == "Bagging trains each tree on a bootstrap sample of the data. Then the trees vote."
    assert join_overlapping(["First part.", "Unrelated second part."]) == "First part.\n\nUnrelated second part."
    assert join_overlapping([]) == ""


def _chunk(section: str, section_no: int, text: str, position: int) -> tuple[int, Chunk]:
    return position, Chunk("g", "Post", section, section_no, "https://x/#a", text, position, "")


def test_section_text_adds_subsections_with_their_headings_while_they_fit():
    members = [_chunk("Q1. Why?", 1, "Own text of the section.", 0),
               _chunk("Q1. Why? > Detail", 2, "A subsection about details.", 1),
               _chunk("Q1. Why? > More", 3, " ".join(["word"] * 50), 2)]
    assert _section_text(members, 1, max_words=20) == ("Own text of the section.\n\n**Detail**\n\n"
                                                       "A subsection about details.")
    assert _section_text(members[:1], 1, max_words=20) == "Own text of the section."


def test_a_pronoun_points_back_only_from_the_first_clause():
    # after "and", "it" is the thing the question itself just named
    assert not has_pronoun("What is the unit of prediction in an ML system and why does it matter?")
    assert not has_pronoun("what is YaRN, how does it stretch rope")
    for q in ("is that expensive?", "and what are its weaknesses?", "how does that work, and is it slow?",
              "why would that be better than euclidean distance?"):
        assert has_pronoun(q), q


def test_follow_up_decision():
    history = [("How do I pick k for k-means?", "Use the elbow method.")]
    explicit = follow_up("and for DBSCAN?", history)
    assert explicit and explicit.explicit and explicit.previous == history[0][0]
    maybe = follow_up("is it expensive?", history)  # a pronoun: searched alone first, joined if not covered
    assert maybe and not maybe.explicit
    for bare in ("why?", "how so?", "why not?", "how come?"):  # nothing to search for alone: only a follow-up
        assert follow_up(bare, history).explicit, bare
    assert not follow_up("who are you?", history).explicit  # no content word either, but no follow-up
    # and a bare "why?" carries its subject along: the next follow-up is still about the question before it
    chained = follow_up("and for DBSCAN?", history + [("why?", "...")])
    assert chained.previous == f"why? {history[0][0]}"
    assert follow_up("How does a random forest estimate out-of-bag error for each training sample?", history) is None
    # a pronoun in a question that says what it is about does not make it a follow-up
    assert follow_up("my model looks great offline but acts weird in prod, what's that called", history) is None
    assert follow_up("does that work for clusters of different density?", history)
    assert follow_up("thanks!", history) is None and follow_up("ok cool, thank you", history) is None
    assert follow_up("and for DBSCAN?", []) is None
    # polite turns are skipped: a follow-up refers to the last real question
    chat = [("how does DBSCAN work?", "..."), ("thanks, that helps", "..."), ("ok cool", "...")]
    assert follow_up("thanks, that helps", chat[:1]) is None
    assert follow_up("is it slow on big data?", chat).previous == "how does DBSCAN work?"
    assert follow_up("thanks! and how about k-means?", chat).previous == "how does DBSCAN work?"  # asks: not polite only
    assert follow_up("ok cool", chat[1:]) is None and follow_up("is it slow?", chat[1:]) is None  # nothing asked
    # a polite opening before a follow-up is still a follow-up (seen in the browser: "ok and gmm" got "Glad to help")
    for polite in ("ok and gmm", "thanks! what about gmm", "cool, why?", "okay, and for GMM then"):
        assert follow_up(polite, chat).explicit, polite
    assert follow_up("ok cool, thank you", chat) is None and follow_up("thanks, got it", chat) is None
    # one that pointed back carries its own subject along, one step back
    chained = chat[:1] + [("is it slow on big data?", "...")]
    assert follow_up("and what about its weaknesses?", chained).previous == \
        "is it slow on big data? how does DBSCAN work?"
    complete = chat[:1] + [("how do I pick k for k-means?", "...")]  # short but complete: no chain
    assert follow_up("is it expensive?", complete).previous == "how do I pick k for k-means?"


def test_contractions_typed_without_apostrophe_are_no_content_words():
    # "whats the catch memory-wise?" after a KV-cache question: "whats" counted as a fourth content word, so the
    # follow-up was taken for a complete question, searched alone and refused
    assert content_words("whats a gmm") == {"gmm"}
    assert content_words("why don't we init to zero") == {"init", "zero"}  # not "don"
    assert follow_up("whats the downside memory-wise?", [("how does a kv cache speed up decoding?", "...")])


def test_history_and_k_validation():
    assert check_history([["q", "a"]], 100) == [("q", "a")]
    for bad in ([[1, 2]], [["only one"]], "not a list", [["q", "a", "b"]]):
        with pytest.raises(QuestionError, match="JSON list of \\[question, answer\\] pairs"):
            check_history(bad, 100)
    with pytest.raises(QuestionError, match="turn 1's question is 101 characters long"):
        check_history([["x" * 101, "a"]], 100)
    assert check_k(None, 5) == 5 and check_k(0, 5) == 5 and check_k(3.0, 5) == 3
    for bad in (-5, 21, 10**6, True, "3"):
        with pytest.raises(QuestionError, match="whole number from 1 to 20"):
            check_k(bad, 5)


VOCAB = Vocabulary(["K-means assigns points to the nearest centroid. Xavier initialization keeps the variance "
                    "of activations stable.", "Xavier initialization suits tanh. Adam adapts the learning rate."])


def test_a_hyphenated_term_with_a_one_letter_part_is_one_word():
    # "k-means" is not the everyday "means" ("this means ..."), however the user writes it
    assert stems("how do I pick k for k-means?") == stems("pick k for kmeans") == {"pick", "kmean"}
    assert words("K-Means++ vs t-SNE") == ["kmeans", "vs", "tsne"]
    # longer parts stay words of their own, so "cross entropy" still meets "cross-entropy"
    assert words("cross-entropy and out-of-bag") == ["cross", "entropy", "and", "out", "of", "bag"]


def test_vocabulary_knows_the_posts_words_joined_up_and_inflected():
    assert VOCAB.known("kmeans") and VOCAB.known("centroids") and VOCAB.known("activations")
    assert not VOCAB.known("sourdough")
    assert VOCAB.spelled_out("kmeans") == "k-means"
    assert VOCAB.spelled_out("xaiver") == "xavier"  # one transposition from a word the posts use twice
    assert VOCAB.spelled_out("lora") is None  # four letters: too short to guess
    # a different or extra first letter is mostly another term, not a typo: QLoRA, NAdam, RAdam are no LoRA, Adam
    vocab = Vocabulary(["LoRA trains low-rank factors; Adam adapts step sizes.", "LoRA with Adam fine-tunes cheaply."])
    assert vocab.spelled_out("qlora") is None and vocab.spelled_out("nadam") is None
    assert vocab.spelled_out("radam") is None and vocab.spelled_out("adamm") == "adam"
    assert VOCAB.spelled_out("variance") is None  # already the posts' spelling


def test_an_english_derivation_of_a_posts_word_is_no_unknown_term():
    vocab = Vocabulary(["The objective is specified first. A cheap model, a costly one.", "Compute the features."])
    assert all(vocab.derived(w) for w in ("unspecified", "cheaply", "costlier", "precompute"))
    assert not vocab.derived("qlora") and not vocab.derived("bonferroni") and not vocab.derived("reformer")
    # "unspecified" says how, "bonferroni" names something the posts do not cover
    assert vocab.rare_unknown("unspecified objective, bonferroni correction?") == ["bonferroni"]


def test_a_clipped_word_is_completed_only_when_the_posts_complete_it_one_way():
    vocab = Vocabulary(["BPE merges pairs until the vocabulary is full.", "Convolution layers share weights.",
                        "Training reaches convergence sooner with momentum.", "Information gain picks the split."])
    assert vocab.completion("vocab") == "vocabulary"  # one section is enough: chat clips the posts' own term
    assert vocab.spelled_out("vocab") == "vocabulary"
    assert vocab.rare_unknown(spell_out("how does bpe build its vocab", vocab)) == []  # not an unknown topic
    assert vocab.completion("conv") is None  # convolution or convergence: no guess
    assert vocab.completion("info") is None  # common English: left as typed
    assert vocab.completion("bpe") is None  # a word the posts use as it is
    assert spell_out("init sizes", VOCAB) == "init (initialization) sizes"  # the shorthand table's, not twice


def test_rare_unknown_words_name_what_the_posts_do_not_cover():
    # everyday words the posts never use are not evidence of an uncovered topic; rare technical ones are
    assert VOCAB.rare_unknown("lol is adam weird or gonna be ok") == []
    assert VOCAB.rare_unknown("what does amsgrad fix in adam") == ["amsgrad"]
    assert VOCAB.rare_unknown("xaiver (xavier) init (initialization) for kmeans") == []  # spelled out
    assert VOCAB.rare_unknown("xaiver init") == ["xaiver", "init"]


def test_spell_out_writes_the_posts_spelling_next_to_the_word():
    assert spell_out("xaiver init for kmeans?", VOCAB) == "xaiver (xavier) init (initialization) for kmeans (k-means)?"
    assert spell_out("what is adam", VOCAB) == "what is adam"


def _passage(section: str, text: str, dense: float, heading: float) -> Passage:
    return Passage("g", "Post", section, "https://x", "", text, text, 1.0, dense, heading)


def test_coverage_features_and_model():
    passages = [_passage("Adam", "Adam adapts the learning rate per parameter.", 0.7, 0.5),
                _passage("Xavier", "Xavier initialization suits tanh.", 0.3, 0.1)]
    f = features("how does adam adapt the learning rate", passages, VOCAB, 0.6)
    assert f["dense"] == 0.7 and f["heading"] == 0.5 and f["sentence"] == 0.6 and f["dense_gap"] == pytest.approx(0.4)
    assert f["top_term_share"] == 1.0 and f["rare_unknown"] == 0.0
    f = features("what does amsgrad fix", passages, VOCAB, 0.2)
    assert f["rare_unknown"] == 1.0 and f["rare_share"] == pytest.approx(1 / 2)
    model = CoverageModel(["dense", "rare_unknown"], [0.5, 0.0], [0.1, 1.0], [2.0, -3.0], 0.0, 0.5)
    assert model.probability({"dense": 0.5, "rare_unknown": 0.0}) == pytest.approx(0.5)
    assert model.probability({"dense": 0.7, "rare_unknown": 0.0}) == pytest.approx(1 / (1 + math.exp(-4)))
    assert model.probability({"dense": 0.7, "rare_unknown": 2.0}) < 0.5


def test_a_coverage_model_fitted_on_other_signals_is_a_clear_error(tmp_path):
    path = tmp_path / "coverage.json"
    CoverageModel(["dense", "unknown_share"], [0, 0], [1, 1], [1, 1], 0.0, 0.5).save(path)
    with pytest.raises(RagError, match="unknown_share.*rag calibrate"):
        CoverageModel.load(path)
    path.write_text("{not json")
    with pytest.raises(RagError, match="unreadable"):
        CoverageModel.load(path)
    assert CoverageModel.load(tmp_path / "missing.json") is None
