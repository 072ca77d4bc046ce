"""Posts -> chunks: one section per heading, long sections split further, sized in embedder tokens."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from langchain_text_splitters import ExperimentalMarkdownSyntaxTextSplitter, RecursiveCharacterTextSplitter

from .feed import Post

# Bump when the code makes different chunks from the same feed and settings (text, context, sections):
# the manifest records it, so an index built by older code is refused with a rebuild hint, not served stale.
CHUNKER_VERSION = 4  # 4: a short piece joins only its own section or subsections, never another question's
SEPARATORS = ["\n\n", "\n", ". ", "; ", ", ", " ", ""]


@dataclass(frozen=True)
class Chunk:
    post_guid: str
    post_title: str
    section: str  # heading path, "Q3: ... > How OOB error is computed"; the post title before any heading
    section_no: int  # ordinal of the section in its post: chunks of one section share it
    url: str  # link to the post, with the section anchor when there is a heading
    text: str  # the passage as shown and cited
    position: int  # ordinal of the chunk in its post
    context: str = ""  # title and headings as the embedder saw them (clipped to fit its window)

    @property
    def embed_text(self) -> str:
        """What the embedder sees, and BM25 after rag.index.keyword_text: the passage with its post title and
        headings as context."""
        return (self.context or context_prefix(self.post_title, self.section)) + self.text


def context_prefix(title: str, section: str) -> str:
    return f"{title}\n{section}\n\n" if section and section != title else f"{title}\n\n"


def section_title(section: str) -> str:
    """The heading a reader recognises: the last one, led by its parent when that parent is the interview
    question it belongs to, so the many "k-Nearest Neighbors (kNN)" sub-sections of one post tell apart."""
    path = section.split(" > ")
    if len(path) > 1 and path[-2].rstrip().endswith("?") and not path[-1].rstrip().endswith("?"):
        return f"{path[-2]} › {path[-1]}"
    return path[-1]


def anchor(heading: str) -> str:
    """Substack's heading anchor: '#§' plus a slug of the heading text."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9\s-]", "", text)
    return "§" + re.sub(r"[\s-]+", "-", slug).strip("-")


def section_url(post_url: str, post_title: str, path: list[str] | tuple[str, ...]) -> str:
    """The link of a section: the post's, with the heading's anchor below the first heading; none without
    a post link (rag.feed stores only http(s) links, so an anchor alone would point nowhere)."""
    if not post_url or list(path) == [post_title]:
        return post_url
    return f"{post_url}#{anchor(path[-1])}"


def sections(markdown: str) -> list[tuple[list[str], str]]:
    """(heading path, body) per section, in order; code blocks stay inside their section."""
    docs = ExperimentalMarkdownSyntaxTextSplitter(strip_headers=True).split_text(markdown + "\n")
    out: list[tuple[list[str], str]] = []
    for doc in docs:
        path = [v.strip() for k, v in sorted(doc.metadata.items()) if k.startswith("Header")]
        body = doc.page_content.strip()
        if out and out[-1][0] == path:
            out[-1] = (path, out[-1][1] + "\n\n" + body)
        else:
            out.append((path, body))
    return out


def _related(a: list[str], b: list[str]) -> bool:
    """One heading path is the other or lies inside it: a section and its own subsections."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _raw_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` without truncation or padding, from either that or a transformers fast
    tokenizer (its backend): counting with it directly costs a fraction of going through transformers."""
    from tokenizers import Tokenizer

    raw = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(raw, Tokenizer):
        raise TypeError(f"the chunker needs a fast (Rust) tokenizer, not {type(tokenizer).__name__}")
    raw = Tokenizer.from_str(raw.to_str())  # a copy: the owner may switch truncation on and off
    raw.no_truncation()
    raw.no_padding()
    return raw


class Chunker:
    def __init__(self, tokenizer, max_tokens: int = 256, overlap: int = 32, min_tokens: int = 48):
        self.tokenizer = _raw_tokenizer(tokenizer)
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.min_tokens = min_tokens

    def count(self, text: str) -> int:
        """Tokens the embedder sees, special tokens included."""
        return len(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def _pieces(self, text: str) -> int:
        """Word pieces without special tokens: what langchain's from_huggingface_tokenizer counts."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _split(self, body: str, budget: int) -> list[str]:
        splitter = RecursiveCharacterTextSplitter(
            length_function=self._pieces, chunk_size=budget, chunk_overlap=min(self.overlap, budget // 4),
            separators=SEPARATORS, keep_separator="end")
        return [p.strip() for p in splitter.split_text(body) if p.strip()]

    def _fit(self, prefix: str, body: str) -> list[str]:
        """Split body so that prefix + piece never exceeds max_tokens (the splitter's sums are estimates)."""
        budget = self.max_tokens - self.count(prefix)
        pieces = self._split(body, budget)
        while any(self.count(prefix + p) > self.max_tokens for p in pieces):
            budget = int(budget * 0.9)
            pieces = self._split(body, budget)
        return pieces

    def chunk(self, post: Post) -> list[Chunk]:
        pieces: list[tuple[int, list[str], str]] = []
        for section_no, (path, body) in enumerate(sections(post.markdown)):
            if not body:
                continue
            path = path or [post.title]  # text before the first heading belongs to the post as a whole
            pieces += [(section_no, path, p) for p in self._fit(self._prefix(post.title, path), body)]
        pieces = self._merge_orphans(post.title, pieces)
        return [
            Chunk(post.guid, post.title, " > ".join(path), no, section_url(post.url, post.title, path), text, i,
                  self._prefix(post.title, path))
            for i, (no, path, text) in enumerate(pieces)
        ]

    def _clip(self, text: str, tokens: int) -> str:
        """The start of `text`, at most `tokens` embedder tokens, cut at a token boundary."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(enc.ids) <= tokens else text[: enc.offsets[tokens - 1][1]]

    def _prefix(self, title: str, path: list[str]) -> str:
        """Title and headings are context, not content: clipped so they never eat the passage's budget."""
        return context_prefix(self._clip(title, 32), self._clip(" > ".join(path), 64))

    def _merge_orphans(self, title: str, pieces: list) -> list:
        """A short piece joins its neighbour in the post (previous first) when the result still fits."""
        out: list = []
        for piece in pieces:
            no, path, text = piece
            if out and self.count(text) < self.min_tokens and _related(path, out[-1][1]):
                pno, ppath, ptext = out[-1]
                merged = f"{ptext}\n\n{self._label(path, ppath)}{text}"
                if self.count(self._prefix(title, ppath) + merged) <= self.max_tokens:
                    out[-1] = (pno, ppath, merged)
                    continue
            if out and self.count(out[-1][2]) < self.min_tokens and _related(path, out[-1][1]):
                pno, ppath, ptext = out[-1]
                merged = f"{self._label(ppath, path)}{ptext}\n\n{text}"
                if self.count(self._prefix(title, path) + merged) <= self.max_tokens:
                    out[-1] = (no, path, merged)
                    continue
            out.append(piece)
        return out

    @staticmethod
    def _label(path: list[str], host_path: list[str]) -> str:
        """A merged-in piece from another section keeps its heading, so the text still reads right."""
        return "" if path == host_path or not path else f"{path[-1]}\n\n"
