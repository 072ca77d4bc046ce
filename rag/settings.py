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

from .errors import RagError

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_FEED = PROJECT_DIR / "corpus" / "dshandbook-interview-prep.rss.xml"


class SettingsError(RagError):
    """A setting has an unknown name or an invalid value."""


@dataclass(frozen=True)
class Settings:
    # where things live
    index_dir: Path = PROJECT_DIR / "index"
    feed: str = str(DEFAULT_FEED)
    feedback_path: Path | None = None  # default: <index_dir>/feedback.jsonl

    # models: a packaged name, a Hugging Face id or a local directory / .gguf file
    embedder: str = "sentence-transformers/all-MiniLM-L6-v2"
    generator: str = "Qwen/Qwen2.5-Coder-0.5B-Instruct"  # packaged; "SmolLM2-135M-Instruct" for small machines
    generator_dtype: str = "bfloat16"  # or "float32", "int8" (docs/generator.md has the measurements)
    generator_threads: int = 0  # torch threads for the model; 0: torch's default, one per core
    generator_serial: bool = True  # concurrent answers take turns per step (False + 1 thread: parallel answers)
    device: str = "cpu"
    embed_batch_size: int = 32
    embed_backend: str = "openvino"  # one of rag.embed_backends.BACKENDS; recorded in the index manifest
    ann_threshold: int = 200_000  # vectors; past this an approximate FAISS index replaces the exact one

    # feed
    max_item_chars: int = 2_000_000  # characters of one item's HTML; a bigger item is skipped with a warning
    watch_interval: float = 300.0  # seconds between polls of the feed by `rag index --watch` (rag.watch)

    # chunking, in embedder tokens (all-MiniLM-L6-v2 truncates at 256 word pieces)
    max_chunk_tokens: int = 256
    chunk_overlap_tokens: int = 32
    min_chunk_tokens: int = 48

    # retrieval
    top_k: int = 5
    candidates: int = 30
    fusion: str = "convex"  # one of rag.fusion.FUSIONS
    dense_weight: float = 0.6
    rrf_k: int = 60
    followup_weight: float = 0.3  # a follow-up's own words vs the follow-up joined to the previous question
    # the answer's sentences are ranked by a follow-up's own words more than by the earlier question's, which
    # chose the section: joined alone, "whats the catch memory-wise?" re-quoted the previous answer (docs/eval.md)
    followup_sentence_weight: float = 0.7
    followup_margin: float = 0.02  # a possible follow-up is joined when that is this much likelier covered
    heading_weight: float = 0.3  # bonus for a section whose heading matches the question
    # a post's opening and closing sections talk about the post ("This blog curates ..."), not a topic: they rank
    # this much lower, so "what is a loss function" is answered from a section about loss functions
    aside_penalty: float = 0.3
    coverage_model: Path | None = PROJECT_DIR / "rag" / "coverage_model.json"  # `rag calibrate` writes it
    refusal_threshold: float = 0.49  # without a coverage model: the best dense or heading cosine must reach it
    suggest_similarity: float = 0.35  # a refusal offers the nearest sections when one is at least this similar
    # an unsure "not covered": the model sketches an answer, searched and decided again; off by default, since
    # with the threshold chosen for both looks it did not beat the first look alone on dev (docs/eval.md)
    second_look: bool = False
    second_look_floor: float = 0.03  # the coverage probability from which a refusal counts as unsure
    section_words: int = 400  # a cited section shows its subsections up to this many words

    # answering
    answer_mode: str = "extractive"  # one of rag.modes.MODES; the default is the best on dev (docs/eval.md)
    max_new_tokens: int = 160
    close_sections: float = 0.1  # a runner-up section this close to the best (fused score) shares the answer
    second_hop_margin: float = 0.15  # extractive: a 2nd-section sentence may be this much less similar
    max_question_chars: int = 2000
    context_tokens: int = 900

    # app
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str = ""  # /v1 (OpenAI-compatible) answers only loopback clients unless this key is set and sent

    def __post_init__(self):
        object.__setattr__(self, "index_dir", Path(self.index_dir))
        for name in ("feedback_path", "coverage_model"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Values a run would trip over later, refused now with the choices."""
        from .embed_backends import BACKENDS
        from .fusion import FUSIONS
        from .modes import MODES

        for name, value, choices in (("answer_mode", self.answer_mode, MODES), ("fusion", self.fusion, FUSIONS),
                                     ("embed_backend", self.embed_backend, BACKENDS)):
            if value not in choices:
                raise SettingsError(f"unknown {name.replace('_', ' ')} {value!r}; one of {', '.join(choices)}")
        for name in ("top_k", "candidates", "max_new_tokens", "max_question_chars", "context_tokens",
                     "max_chunk_tokens", "embed_batch_size", "port", "max_item_chars"):
            if getattr(self, name) < 1:
                raise SettingsError(f"setting {name} must be at least 1, not {getattr(self, name)}")
        if self.watch_interval <= 0:
            raise SettingsError(f"setting watch_interval must be above 0 seconds, not {self.watch_interval}")
        for name in ("dense_weight", "followup_weight", "followup_sentence_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"setting {name} must be between 0 and 1, not {getattr(self, name)}")

    @property
    def feedback_file(self) -> Path:
        return self.feedback_path or self.index_dir / "feedback.jsonl"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _coerce(name: str, raw):
    """Convert a TOML or environment value to the type of the field's default."""
    if name not in _field_names():
        raise SettingsError(f"unknown setting {name!r}; known: {', '.join(sorted(_field_names()))}")
    default = getattr(Settings(), name)
    if default is None or isinstance(raw, type(default)):
        return raw
    if isinstance(default, bool):  # bool("false") is True: read the word
        word = str(raw).strip().lower()
        if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise SettingsError(f"setting {name}={raw!r} is not true or false")
        return word in ("1", "true", "yes", "on")
    try:
        return Path(raw) if isinstance(default, Path) else type(default)(raw)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"setting {name}={raw!r} is not a valid {type(default).__name__}") from e


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
