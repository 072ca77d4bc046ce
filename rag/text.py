"""Text utilities with no heavy imports: sentences, content words, stems, citation markers.

Sentence splitting is blingfire's (a compiled tokenizer, correct on "e.g." and "Fig. 2", ~30x faster than
syntok and ~40x faster than pysbd on the posts; docs/architecture.md); stems are Snowball's. Importing this
module loads none of torch, FAISS or langchain.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import takewhile

import blingfire
import snowballstemmer

# The core of NLTK's English stop words (NLTK ships them only as a corpus download, so they are copied). The
# `stop-words` package's English list (1,298 words) would drop domain words such as "bn", "lr", "cv",
# "test", "value", "zero" and "index"; scikit-learn's would pull SciPy into every import (docs/architecture.md).
NLTK_STOPWORDS = """a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having he her
here hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or
other our out over own same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who whom why will with would you
your""".split()
# Words that carry no topic in a question ("explain the difference between ... vs ..."); a search or an
# overlap test would rank on them otherwise.
QUERY_WORDS = {"explain", "explains", "explained", "explaining", "tell", "tells", "describe", "describes",
               "described", "describing", "difference", "differences", "vs", "versus", "diff", "diffs", "nutshell",
               "rundown", "tldr", "eli5"}
# Chat filler typed for a word or phrase that names no topic ("plz", "thx", "prolly", "smth", "sorta"). Rare in
# written English, such a word counted as the name of something the posts never mention, the strongest "not
# covered" signal: "whats the diff between bagging and boosting" was refused with a heading cosine of 0.93.
# Written from general chat usage, not from any question set.
CHAT_WORDS = frozenset("pls plz thx ty abt rly prolly smth sth wrt sorta kinda dunno idk imo tbh btw ques u ur".split())
# Contractions: the pieces NLTK's full list has for "don't", "isn't", "we'll" split at the apostrophe, and the
# same words typed without it ("whats the catch?", "dont get it"). Counted as content words, "whats" made a
# three-word follow-up look like a complete four-word question and a word the posts never use.
CONTRACTIONS = frozenset("""ain aren couldn didn doesn don hadn hasn haven isn ll mightn mustn needn re shan shouldn
ve wasn weren won wouldn whats hows whys wheres whens whos thats theres heres dont doesnt didnt isnt arent wasnt
werent cant couldnt shouldnt wouldnt hasnt havent hadnt im ive youre youve theyre s t d m o y""".split())
STOPWORDS = frozenset(NLTK_STOPWORDS) | QUERY_WORDS | CONTRACTIONS | CHAT_WORDS

CITATION = re.compile(r"\s*\[\d+\]")
_MARK = re.compile(r"\[(\d+)\]")
_LEADING_MARKS = re.compile(r"^\s*((?:\[\d+\][\s.,;:]*)+)")
_TRAILING_MARKS = re.compile(r"((?:\s*\[\d+\])+)\s*\.?\s*$")
_STOP_AFTER_MARKS = re.compile(r"([.!?])((?:\s*\[\d+\])+)\s*\.")  # "impact. [1]." (a model's habit)
_FORMULA_MARKS = re.compile(r"(\$\$(?:\s*\[\d+\])+)[ \t]+")  # "$$...$$ [1] Next": the formula ends there
LIST_MARKER = re.compile(r"^\s*(?:[-*+>•]|\d+[.)])\s+")
# a bold line that labels what follows, also as a bullet ("• **Silhouette score**" over "Measures how close ...")
PSEUDO_HEADING = re.compile(r"^\s*(?:[-*+•]\s+)?\*\*[^*]+\*\*:?\s*$")
LABEL_WORDS = 6
LIST_LABEL_WORDS = 8  # a line leading into a list ("Because alignment is sufficient for:") may run longer
# a sentence opening with one of these leans on the sentence before it ("This makes Adam fast and robust"):
# quoted without that sentence it reads as a non sequitur
LEANS_BACK = re.compile(r"^\W*(?:this|these|that|those|it|its|they|their|such|so|thus|where|therefore|hence|however|"
                        r"but|instead(?! of)|now|in contrast|as a result|similarly|in other words|"
                        r"in (?:this|that|such|these|those) cases?|for this reason|because of this)\b", re.I)

# stop words that can end a whole sentence ("Depth, data quality, and feature randomness matter more"); the
# others ("is", "the", "of", "and") end a lead-in or a sentence cut short
ENDING_WORDS = frozenset("more most too again once only very out up down off over here there all both each few "
                         "other some such own same".split())
# a short item that maps a term to what it does ("max_features→ Controls tree correlation"): fewer words than a
# sentence an answer may quote, but no fragment. Only an arrow says so: after a colon ("Examples: AdaBoost,
# Gradient Boosting") a short item is as often a fragment
TERM_DEFINITION = re.compile(r"^[^\s→]+(?: [^\s→]+)?\s*(?:→|->)\s*\S+\s+\S+")

# a sentence with a link points elsewhere ("For more better intuition please read: [AdamW](https://...)", a
# table of contents' "[How does the algorithm handle missing data?](https://...)"): in these posts every one
# does, and none answers a question
LINK = re.compile(r"\]\(https?://")

# Chat shorthand for ML terms that the posts spell out (each appears in at most 3 of the 421 chunks, against
# dozens for the full term), written next to the abbreviation: neither MiniLM nor BM25 links "lgbm" to
# "LightGBM" or "NaNs" to "missing values". Abbreviations the posts themselves use (kNN, SVM, MSE, SGD,
# RLHF...) stay as they are: spelling them out only blurs the match.
SHORTHAND = {
    "rf": "random forest", "gbdt": "gradient boosted decision trees", "lgbm": "LightGBM",
    "tsne": "t-SNE", "pca": "principal component analysis", "oob": "out-of-bag", "bce": "binary cross-entropy",
    "bn": "batch normalization", "dpo": "direct preference optimization",
    "nan": "missing values", "nans": "missing values", "err": "error", "init": "initialization",
    "feats": "features", "dims": "dimensions", "params": "parameters", "hyperparams": "hyperparameters",
    # common ML chat shorthand that no post writes (2026-12-06: four dev paraphrases were refused for "ctx",
    # "vals", "xgb"/"col" and "lr"; the rest written from usage, not from questions)
    "xgb": "XGBoost", "lr": "learning rate", "logreg": "logistic regression", "linreg": "linear regression",
    "nn": "neural network", "nns": "neural networks", "rnn": "recurrent neural network", "vals": "values",
    "val": "validation", "col": "column", "cols": "columns", "ctx": "context", "seq": "sequence",
    "emb": "embedding", "embs": "embeddings", "attn": "attention", "ce": "cross-entropy", "gd": "gradient descent",
    "bs": "batch size", "hp": "hyperparameter", "hps": "hyperparameters", "hparams": "hyperparameters",
    "mle": "maximum likelihood", "fp": "false positive", "fps": "false positives", "fn": "false negative",
    "fns": "false negatives", "conv": "convolutional", "convnet": "convolutional network",
    "regularisation": "regularization", "optimiser": "optimizer",
    # more of the same (2026-12-06 evening; two dev paraphrases were refused for "prod" and "seg"): clipped words the
    # posts never write, each for one full word they use often
    "prod": "production", "seg": "segmentation", "perf": "performance", "acc": "accuracy", "feat": "feature",
    "prob": "probability", "probs": "probabilities", "algo": "algorithm", "algos": "algorithms",
    "impl": "implementation", "arch": "architecture", "infra": "infrastructure", "stats": "statistics",
    "clf": "classifier", "dl": "deep learning", "eval": "evaluation", "func": "function", "obj": "objective",
    "dim": "dimension",
    # clipped everyday words of the same kind (2026-12-06, from usage: each counted as an unknown rare word)
    "avg": "average", "param": "parameter", "hyperparam": "hyperparameter", "pred": "prediction",
    "preds": "predictions", "config": "configuration", "configs": "configurations", "mem": "memory",
    "dnn": "deep neural network",
}

_stemmer = snowballstemmer.stemmer("english")


def split_sentences(line: str) -> list[str]:
    """One line (paragraph or list item) -> its sentences, as blingfire splits them."""
    line = line.strip()
    return [s for s in blingfire.text_to_sentences(line).split("\n") if s.strip()] if line else []


def _keep(sentence: str) -> bool:
    return (len(sentence.split()) >= 3 or "$$" in sentence) and not PSEUDO_HEADING.match(sentence)


def cited_sentences(text: str) -> list[tuple[str, list[int]]]:
    """Sentences and list items of a passage or an answer, each with the citation numbers it carries
    (markers and list markers removed from the sentence). A marker right after a sentence's full stop
    belongs to that sentence; when the only markers are one block at the very end of the answer, they
    cite every sentence. The one parse of "which [n] belongs to which sentence" for the chat and the eval."""
    out: list[list] = []
    for line in _FORMULA_MARKS.sub("\\1\n", text).splitlines():
        for piece in split_sentences(_STOP_AFTER_MARKS.sub(r"\1\2", LIST_MARKER.sub("", line))):
            lead = _LEADING_MARKS.match(piece)
            if lead and out:
                out[-1][1].extend(int(x) for x in _MARK.findall(lead.group(1)))
                piece = piece[lead.end():]
            marks = [int(x) for x in _MARK.findall(piece)]
            sentence = LIST_MARKER.sub("", CITATION.sub("", piece)).strip()
            if _keep(sentence):
                out.append([sentence, marks])
            elif marks and out:
                out[-1][1].extend(marks)
    tail = _TRAILING_MARKS.search(text)
    if tail and out and len(_MARK.findall(text)) == len(_MARK.findall(tail.group(1))):
        block = [int(x) for x in _MARK.findall(tail.group(1))]
        out = [[s, block] for s, _ in out]
    return [(s, list(dict.fromkeys(m))) for s, m in out]


def sentences(text: str) -> list[str]:
    """Sentences and list items of a passage or an answer, citation markers and bold-line labels removed."""
    return [s for s, _ in cited_sentences(text)]


# a hyphenated term with a one-letter part ("k-means", "t-sne", "n-gram") is one word, written joined up: split,
# "k-means" would be the everyday "means" ("this means ...") and tie k-means questions to unrelated sections
_ONE_LETTER_COMPOUND = re.compile(r"\b[a-z]+(?:-[a-z]+)+\b", re.IGNORECASE)


def _joined(match: re.Match) -> str:
    term = match.group(0)
    return term.replace("-", "") if min(map(len, term.split("-"))) == 1 else term


# Greek letters by name: the posts write "the focusing parameter γ", people type "how do i pick gamma"
GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ϵ": "epsilon", "ζ": "zeta",
         "η": "eta", "θ": "theta", "κ": "kappa", "λ": "lambda", "μ": "mu", "ν": "nu", "ξ": "xi", "π": "pi",
         "ρ": "rho", "σ": "sigma", "ς": "sigma", "τ": "tau", "ϕ": "phi", "φ": "phi", "χ": "chi", "ψ": "psi",
         "ω": "omega"}
_GREEK = re.compile("|".join(GREEK), re.IGNORECASE)  # "Σ", "Δ" too: the keyword index is not lower-cased first


def greek_names(text: str) -> str:
    return _GREEK.sub(lambda m: f" {GREEK.get(m.group(0).lower(), GREEK.get(m.group(0)))} ", text)


def joined_compounds(text: str) -> str:
    """`text` with its one-letter compounds written joined up ("K-Means" -> "KMeans") and Greek letters by name
    ("γ" -> " gamma "), the rest as it was: how the words of a question and of the posts are counted and
    searched everywhere."""
    return greek_names(_ONE_LETTER_COMPOUND.sub(_joined, text))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", joined_compounds(text.lower()))


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 1}


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return _stemmer.stemWord(word)


def stems(text: str) -> set[str]:
    """Stems of the content words: "activation" meets "activations", "normalize" meets "normalization"."""
    return {stem(w) for w in content_words(text)}


FORMULA = re.compile(r"\$\$(.+?)\$\$", re.S)  # a display formula, its TeX in group 1


def is_formula(s: str) -> bool:
    return s.lstrip().startswith("$$")


def _plain(line: str) -> str:
    return LIST_MARKER.sub("", line).replace("*", "").strip()


def line_before(text: str, part: str) -> str:
    """The last non-empty line of `text` before `part` (a display formula: always a line of its own)."""
    lines = text[:max(text.find(part), 0)].rstrip().splitlines()
    return lines[-1] if lines else ""


FENCE = re.compile(r"^[ \t]*```.*$", re.M)
# a line of code: an assignment or a call, braces, a statement keyword, or indented like a block body
CODE_LINE = re.compile(r"[=;{}]|\w\(|^\s{4,}\S|^\s*(?:def|return|for|if|while|function|class|import)\b")


def _codeish(segments: list[str]) -> float:
    lines = [line for seg in segments for line in seg.splitlines() if line.strip()]
    return sum(bool(CODE_LINE.search(line)) for line in lines) / len(lines) if lines else 0.0


def without_code(text: str) -> str:
    """`text` without its fenced code blocks: code is no sentence to quote ("left_child = build_tree(left_data,
    depth + 1)." was an answer). A chunk may start or end inside a block, so one fence can lack its twin: the
    segments that look more like code are taken for the code."""
    if "```" not in text:
        return text
    parts = FENCE.split(text)
    starts_in_code = len(parts) % 2 == 0 and _codeish(parts[0::2]) > _codeish(parts[1::2])
    return "\n\n".join(p for i, p in enumerate(parts) if i % 2 == int(starts_in_code))


def joined_lists(text: str) -> str:
    """`text` with each list of short items under a label written as one line ("Controls:" over "• Tree depth",
    "• Learning rate", "• Regularization parameters (λ,γ)" -> "Controls: Tree depth, Learning rate,
    Regularization parameters (λ,γ)."): each item alone is too short to quote, yet together they answer
    "which params control overfitting". Only when every item is short: a list of sentences stays a list."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        label = _plain(lines[i])
        if not LIST_MARKER.match(lines[i]) and label.endswith(":") and len(label.split()) <= LIST_LABEL_WORDS:
            items = [_plain(line) for line in takewhile(LIST_MARKER.match, lines[i + 1:])]  # only after a label
            if len(items) >= 2 and all(0 < len(x.split()) < 5 and not x.endswith(":") for x in items):
                out.append(f"{label} {', '.join(x.rstrip('.;,') for x in items)}.")
                i += 1 + len(items)
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def answer_sentences(text: str) -> list[str]:
    """Passage sentences that can stand alone in an answer: not headings or questions, not lead-ins to a
    list, not a fragment cut inside bold text or left after a formula ("where τ is a temperature."), not a
    pointer to a link. A sentence that leads into a formula comes with it ("... weight updates take the form
    $$...$$"), and so does a short label ("In Adam: $$...$$"); a formula after anything else is no sentence."""
    out = []
    text = joined_lists(without_code(text))
    parts = sentences(text)
    items = list_items(text)
    i = 0
    while i < len(parts):
        s = parts[i]
        bare = s.replace("*", "").strip()
        tokens = bare.split()
        whole = s.count("**") % 2 == 0 and not LINK.search(s)
        if i > 0 and is_formula(parts[i - 1]) and bare[:1].islower():
            i += 1  # the rest of the formula's sentence ("if full covariance matrices are used."): no sentence
            continue
        # (a list item ends without a stop anyway, and the formula after a list is the list's, not its last item's)
        leads_in = bare.endswith(":") or (s not in items and not unquoted(bare).endswith((".", "!", "?")))
        if (whole and leads_in and len(tokens) >= 5 and "$$" not in s and i + 1 < len(parts)
                and is_formula(parts[i + 1])):
            # a sentence that leads into a formula, with a colon or without ("... which is typically $$O(n^3)$$"),
            # says what the formula is for: the two are quoted as one, neither alone
            out.append(f"{s} {parts[i + 1]}")
            i += 2
            continue
        if is_formula(s):
            # a formula right after a kept sentence may follow it in an answer; after a short label ("In Adam:",
            # which is no sentence) it is quoted with the label; after anything else it is no sentence: alone it
            # would seem to follow whichever sentence came before ("Decay is uniform across parameters." with
            # Adam's formula, whose "In Adam:" was left out)
            line = line_before(text, s)
            label = (split_sentences(line) or [""])[-1]
            if (len(tokens) >= 5 and i > 0 and out and out[-1] == parts[i - 1] and not LIST_MARKER.match(line)
                    and _plain(line).endswith(_plain(parts[i - 1]))):
                out.append(s)
            elif (_plain(label).endswith(":") and len(label.split()) < 5 and "$$" not in label
                  and label.count("**") % 2 == 0):
                out.append(f"{LIST_MARKER.sub('', label).strip()} {s}")
            i += 1
            continue
        last = tokens[-1].lower()
        if ((len(tokens) >= 5 or TERM_DEFINITION.match(bare)) and not unquoted(bare).endswith((":", "?"))
                and whole and (last not in STOPWORDS or last in ENDING_WORDS)):
            out.append(s)
        i += 1
    return out


@lru_cache(maxsize=1024)
def list_labels(text: str) -> dict[str, str]:
    """Sentence -> the label of the list it is an item of: quoted alone, "Works only when sparse features are
    informative and clean" loses that it is about AdaBoost. A label is a short line that is no sentence, bold
    or not ("**Boosting**", "AdaBoost"); one ending in a colon ("Net effect:") labels a list within the one
    before it ("AdaBoost — Net effect"), and so does a list item for the items nested under it ("Each leaf shows:").
    A paragraph ends them; a question, a line longer than LABEL_WORDS words or one ending in a comma ("So,",
    which leads into the list) is no label."""
    labels: dict[str, str] = {}
    title = sub = None
    parent: tuple[int, str] | None = None  # (indent, text) of an item that ends in a colon: its nested items' label
    for line in text.splitlines():
        bare = line.replace("*", "").strip()
        if not bare:
            continue
        if LIST_MARKER.match(line):
            indent = len(line) - len(line.lstrip())
            if parent and indent <= parent[0]:
                parent = None
            label = parent[1] if parent else " — ".join(x for x in (title, sub) if x)
            if label:
                for sentence in sentences(line):
                    labels.setdefault(sentence, label)
            item = _plain(line)
            if item.endswith(":") and len(item.split()) <= LABEL_WORDS and not parent:
                parent = (indent, item.rstrip(":").strip())  # "- Each leaf shows:" over "  - the predicted class"
            continue
        parent = None
        if len(bare.split()) <= LABEL_WORDS and not bare.endswith((".", "!", "?", "$$", ",", ";")):
            if bare.endswith(":"):
                sub = bare.rstrip(":").strip()
            else:
                title, sub = bare, None
        else:
            title = sub = None
    return labels


@lru_cache(maxsize=1024)
def bold_leads(text: str) -> dict[str, str]:
    """The first sentence of a paragraph under a bold line -> that line without its bold marks ("They assume
    data is generated from a mixture of Gaussians ..." -> "Gaussian Mixture Models take yet another view."). The
    sentence before it in the text belongs to the topic before the bold line, and "They" means this one."""
    return {sentence: heading for sentence, heading, _ in _leads(text)}


def item_leads(text: str) -> dict[str, str]:
    """The same, for a bold line that is a list item naming a term ("• **Silhouette score**" over "Measures how
    close a point is ..."): a list of terms, each explained by the paragraph under it. Quoted, such a sentence
    needs the term whatever its first word."""
    return {sentence: heading for sentence, heading, item in _leads(text) if item}


def _leads(text: str):
    heading, item = None, False
    for line in text.splitlines():
        if not line.strip():
            continue
        if PSEUDO_HEADING.match(line):
            heading, item = _plain(line), bool(LIST_MARKER.match(line))
            continue
        first = sentences(line)[:1] if heading and not LIST_MARKER.match(line) else []
        if first:
            yield first[0], heading, item
        heading = None


def labelled_sentences(text: str, lists: bool = True) -> list[tuple[str, str]]:
    """Each of `answer_sentences`, and the same with the term it is about in front when a bulleted bold term (or
    with `lists`, a list label) names it ("Ward's linkage: Minimizes the increase in within-cluster variance"):
    alone, the sentence does not say what it defines, and a question naming the term finds it only with its
    label."""
    labels = {**item_leads(text), **(list_labels(text) if lists else {})}
    out = []
    for s in answer_sentences(text):
        label = labels.get(s)
        out.append((s, f"{label.rstrip('.:!?')}: {s}" if label and label.lower() not in s.lower() else s))
    return out


@lru_cache(maxsize=1024)
def list_items(text: str) -> frozenset[str]:
    """The sentences of `text` that are items of a list ("- Is stable for sequence modeling")."""
    return frozenset(s for line in text.splitlines() if LIST_MARKER.match(line) for s in sentences(line))


def unquoted(s: str) -> str:
    """`s` without closing quotes, brackets and bold marks, to see how the sentence itself ends."""
    return s.rstrip("\"'”’)* ")
