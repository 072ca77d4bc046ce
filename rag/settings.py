"""One settings object for the whole package.

Precedence, lowest to highest: the defaults below, an optional `rag.toml` (in the working directory
or named by `RAG_CONFIG`), `RAG_<FIELD>` environment variables, then explicit overrides (CLI flags).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_FEED = PROJECT_DIR / "corpus" / "dshandbook-interview-prep.rss.xml"


@dataclass(frozen=True)
class Settings:
    # where things live
    index_dir: Path = PROJECT_DIR / "index"
    feed: str = str(DEFAULT_FEED)
    feedback_path: Path | None = None  # default: <index_dir>/feedback.jsonl

    # models: a packaged name, a Hugging Face id or a local directory / .gguf file
    embedder: str = "sentence-transformers/all-MiniLM-L6-v2"
    generator: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    device: str = "cpu"
    embed_batch_size: int = 32
    ann_threshold: int = 200_000  # vectors; past this an approximate FAISS index replaces the exact one

    # chunking, in embedder tokens (all-MiniLM-L6-v2 truncates at 256 word pieces)
    max_chunk_tokens: int = 256
    chunk_overlap_tokens: int = 32
    min_chunk_tokens: int = 48

    # retrieval
    top_k: int = 5
    candidates: int = 30
    fusion: str = "convex"  # convex | rrf | dense | bm25
    dense_weight: float = 0.6
    rrf_k: int = 60
    followup_weight: float = 0.3  # a follow-up's own words vs the follow-up joined to the previous question
    heading_weight: float = 0.3  # bonus for a section whose heading matches the question
    refusal_threshold: float = 0.49  # from `rag calibrate` on eval/questions.jsonl (eval/calibration.json)
    section_words: int = 400  # a cited section shows its subsections up to this many words

    # answering
    # extractive | grounded | free. Extractive wins on the dev set (docs/eval.md, all 153 questions): token F1
    # 0.257 vs 0.188 (grounded) and 0.149 (free), groundedness 1.00 / 1.00 / 0.10, answer p50 0.14 s vs 1.08 s
    # and 6.7 s.
    answer_mode: str = "extractive"
    max_new_tokens: int = 160
    grounded_candidates: int = 8  # sentences the copy-constrained model may choose from
    second_hop_margin: float = 0.15  # extractive: a 2nd-section sentence may be this much less similar
    max_question_chars: int = 2000
    context_tokens: int = 900

    # app
    host: str = "127.0.0.1"
    port: int = 7860

    def __post_init__(self):
        object.__setattr__(self, "index_dir", Path(self.index_dir))
        if self.feedback_path is not None:
            object.__setattr__(self, "feedback_path", Path(self.feedback_path))

    @property
    def feedback_file(self) -> Path:
        return self.feedback_path or self.index_dir / "feedback.jsonl"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _coerce(name: str, raw):
    """Convert a TOML or environment value to the type of the field's default."""
    if name not in _field_names():
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(_field_names()))}")
    default = getattr(Settings(), name)
    if default is None or isinstance(raw, type(default)):
        return raw
    try:
        return Path(raw) if isinstance(default, Path) else type(default)(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"setting {name}={raw!r} is not a valid {type(default).__name__}") from e


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(Settings)}


def load_settings(config: str | Path | None = None, **overrides) -> Settings:
    """Build the settings from defaults, rag.toml, RAG_* environment and explicit overrides."""
    values: dict = {}
    path = Path(config or os.environ.get("RAG_CONFIG", "rag.toml"))
    if path.is_file():
        data = tomllib.loads(path.read_text())
        data = data.get("rag", data)
        values.update({k: _coerce(k, v) for k, v in data.items()})
    for name in _field_names():
        env = os.environ.get(f"RAG_{name.upper()}")
        if env not in (None, ""):
            values[name] = _coerce(name, env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
