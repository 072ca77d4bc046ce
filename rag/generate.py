"""A local causal LM (transformers) that streams tokens, optionally constrained to copy passage sentences.

The packaged SmolLM2-135M invents content when left free, so the default decoding only lets it continue
spans copied from the passages (CopyConstraint): every answer sentence is a sentence of a passage, and we
know which one, which makes its citation exact.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .models import ModelError, generator_location

log = logging.getLogger(__name__)


@dataclass
class Token:
    text: str  # the new text this step adds to the answer
    passage: int | None = None  # for constrained decoding: index of the passage the sentence came from
    sentence_done: bool = False


class Generator:
    def __init__(self, name: str, threads: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loc = generator_location(name)
        log.info("loading generator %s from %s %s", name, loc.path, loc.gguf_file or "")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(loc.path, gguf_file=loc.gguf_file)
            self.model = AutoModelForCausalLM.from_pretrained(loc.path, gguf_file=loc.gguf_file,
                                                              dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - any load failure gets one clear message
            raise ModelError(f"cannot load generator {name!r} from {loc.path}: {e}") from e
        self.model.eval()
        self.name = name
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.lock = threading.Lock()
        if threads:
            torch.set_num_threads(threads)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        return enc["input_ids"]

    def stream(self, messages: list[dict], max_new_tokens: int = 160,
               constraint: "CopyConstraint | None" = None, repetition_penalty: float = 1.0) -> Iterator[Token]:
        """Greedy decoding with a KV cache, yielding token by token so the caller can stream and cite.

        Under a copy constraint, once the model has committed to a sentence its remaining tokens are
        forced; they are appended without asking the model and fed back in one forward pass, so a copied
        sentence costs a few model calls instead of one per token.
        """
        ids = self.prompt_ids(messages)
        eos = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None}
        produced: list[int] = []
        shown = ""
        with torch.inference_mode():
            out = self._forward(ids)
            while len(produced) < max_new_tokens:
                logits = self._penalise(out.logits[0, -1], produced, repetition_penalty)
                if constraint is not None:
                    logits = constraint.mask(logits, eos)
                token = int(torch.argmax(logits))
                if token in eos:
                    break
                step = [(token, constraint.advance(token) if constraint is not None else Token(""))]
                while constraint is not None and len(forced := constraint.forced()) == 1:
                    (only,) = forced
                    step.append((only, constraint.advance(only)))
                for tok, event in step:
                    produced.append(tok)
                    text = self.tokenizer.decode(produced, skip_special_tokens=True).lstrip()
                    if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                        event.text, shown = text[len(shown):], text
                        yield event
                if constraint is not None and constraint.finished:
                    break
                out = self._forward(torch.tensor([[t for t, _ in step]]), out.cache)

    def _forward(self, ids: torch.Tensor, cache=None):
        # One forward pass at a time: concurrent answers take turns per step instead of each getting
        # half the cores, and a stream its consumer abandons holds nothing between steps.
        with self.lock:
            return self.model(ids, cache=cache, use_cache=True)

    @staticmethod
    def _penalise(logits: torch.Tensor, produced: list[int], penalty: float) -> torch.Tensor:
        """The usual repetition penalty: make tokens already produced less likely."""
        if penalty == 1.0 or not produced:
            return logits
        seen = torch.tensor(sorted(set(produced)))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
        return logits


@dataclass
class CopyConstraint:
    """Allows only tokens that continue a sentence copied verbatim from the passages.

    `starts` are the token positions where a passage sentence begins; `live` the positions that the
    sentence being copied could continue from. At a sentence end the model may stop or start another
    sentence it has not copied yet.
    """
    tokens: list[int]
    passage_of: list[int]
    starts: list[int]
    ends: set[int]  # positions whose token closes a sentence
    max_sentences: int = 3
    live: set[int] = field(default_factory=set)
    used: set[int] = field(default_factory=set)
    sentences: int = 0
    current_start: set[int] = field(default_factory=set)

    @classmethod
    def build(cls, tokenizer, passages: list[list[str]], max_sentences: int = 3) -> "CopyConstraint":
        """`passages` holds each passage's answer-worthy sentences; each is tokenized with a leading space,
        as it would follow another sentence in the answer."""
        tokens, passage_of, starts, ends = [], [], [], set()
        for n, sents in enumerate(passages):
            for sentence in sents:
                ids = tokenizer(" " + sentence, add_special_tokens=False)["input_ids"]
                if not ids:
                    continue
                starts.append(len(tokens))
                tokens += ids
                passage_of += [n] * len(ids)
                ends.add(len(tokens) - 1)
        return cls(tokens, passage_of, starts, ends, max_sentences)

    @property
    def finished(self) -> bool:
        return self.sentences >= self.max_sentences and not self.live

    def forced(self) -> set[int]:
        """The next token when the sentence being copied leaves no choice, else an empty or larger set."""
        return {self.tokens[p] for p in self.live} if self.live else set()

    def allowed(self) -> set[int]:
        if self.live:
            return {self.tokens[p] for p in self.live}
        return {self.tokens[p] for p in self.starts if p not in self.used}

    def mask(self, logits: torch.Tensor, eos: set[int]) -> torch.Tensor:
        allowed = self.allowed()
        if not self.live and self.sentences > 0:
            allowed |= eos  # stopping is allowed between sentences only
        masked = torch.full_like(logits, float("-inf"))
        idx = torch.tensor(sorted(allowed), dtype=torch.long)
        masked[idx] = logits[idx]
        return masked

    def advance(self, token: int) -> Token:
        if not self.live:
            self.live = {p for p in self.starts if p not in self.used and self.tokens[p] == token}
            self.current_start = set(self.live)
        else:
            self.live = {p for p in self.live if self.tokens[p] == token}
        passage = self.passage_of[min(self.live)] if self.live else None
        done = any(p in self.ends for p in self.live)
        if done:
            # the sentence is complete: every candidate copy of it ends here
            self.used |= self.current_start
            self.sentences += 1
            self.live = set()
        else:
            self.live = {p + 1 for p in self.live if p + 1 < len(self.tokens)}
        return Token("", passage, done)


_generators: dict[str, Generator] = {}
_generators_lock = threading.Lock()


def load_generator(name: str) -> Generator:
    """One shared instance per model; concurrent first calls wait for a single load."""
    with _generators_lock:
        if name not in _generators:
            start = time.perf_counter()
            _generators[name] = Generator(name)
            log.info("generator ready in %.1fs", time.perf_counter() - start)
        return _generators[name]
