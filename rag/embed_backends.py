"""A faster CPU path for the packaged sentence-transformers model: OpenVINO, without torch at run time.

`load_fast_embedder(model_path, backend, cache_dir)` returns an object that has the parts of
`SentenceTransformer` that `rag` uses: `.encode(texts, batch_size, normalize_embeddings=True,
convert_to_numpy=True, show_progress_bar=...)`, `.tokenizer` (a transformers fast tokenizer, loaded on first
use, so a process that only embeds never imports transformers), `.backend_tokenizer` (the `tokenizers`
tokenizer the chunker counts with) and `.get_embedding_dimension()`.

The OpenVINO model is converted once from the local weights (torch + transformers, which `rag` already
depends on; no ONNX file in between) into `cache_dir`, atomically (a temporary directory renamed into
place), and read from there on every later load; nothing is fetched from a hub. Backends:

  torch      sentence-transformers as before (the reference)
  openvino   OpenVINO's CPU plugin. On CPUs with bfloat16 units (AVX512-BF16 / AMX) it runs the matrix
             products in bfloat16 by its own default; elsewhere in fp32. Either way the vectors agree with
             torch's to a cosine of 0.9999 or more (docs/embedding-backends.md has the measurements, and
             the ONNX Runtime fp32/int8 routes that lost to it).

Only the architecture the packaged model has is handled: a BERT encoder with mean pooling (and, for the
modules.json the model ships, normalisation), as sentence-transformers/all-MiniLM-L6-v2 is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino")
# Bump when the exported files would differ for the same weights (conversion code, options).
EXPORT_VERSION = 2
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def import_openvino():
    """OpenVINO with its usage telemetry off. Its converter would send events to a web analytics service
    (openvino-telemetry counts a missing consent file as consent) and write under ~/intel; with the package
    name mapped to None, `import openvino_telemetry` fails and OpenVINO uses its own no-op stub."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


# ---------------------------------------------------------------------------------------------- model facts

def model_facts(model_path: Path) -> dict:
    """What the export depends on: pooling, max length, hidden size; refuses what this module cannot do."""
    config = json.loads((model_path / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ValueError(f"{model_path}: only BERT encoders are supported, not {config.get('model_type')!r}")
    modules = json.loads((model_path / "modules.json").read_text()) if (model_path / "modules.json").exists() else []
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds and kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Transformer", "Pooling", "Normalize")
                                                               for k in kinds):
        raise ValueError(f"{model_path}: unsupported module stack {kinds}")
    pooling_dir = next((m["path"] for m in modules if m["type"].endswith("Pooling")), "1_Pooling")
    pooling = json.loads((model_path / pooling_dir / "config.json").read_text())
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{model_path}: only mean pooling is supported, not {modes}")
    sbert = model_path / "sentence_bert_config.json"
    max_len = json.loads(sbert.read_text()).get("max_seq_length") if sbert.exists() else None
    return {"hidden_size": config["hidden_size"], "num_heads": config["num_attention_heads"],
            "max_seq_length": int(max_len or config.get("max_position_embeddings", 512)),
            "normalize": "Normalize" in kinds}


def cache_key(model_path: Path, backend: str) -> str:
    """Cheap to compute on every load (no hashing of the 90 MB weights): path, sizes and mtimes, configs."""
    h = hashlib.sha256(f"v{EXPORT_VERSION} {backend} {model_path.resolve()}".encode())
    for f in sorted(model_path.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- export

def encoder_module(model_path: Path):
    """The BERT encoder as a torch module of (input_ids, attention_mask, token_type_ids) -> token embeddings."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    return Encoder()


def _convert_openvino(model_path: Path, out: Path) -> str:
    """torch module -> OpenVINO IR (fp32 weights; the CPU plugin picks its inference precision at load)."""
    import torch

    ov = import_openvino()

    ids = torch.ones(2, 16, dtype=torch.long)
    with torch.no_grad():
        model = ov.convert_model(encoder_module(model_path), example_input=(ids, ids, torch.zeros_like(ids)),
                                 input=[(name, [-1, -1], ov.Type.i64) for name in _INPUTS])
    ov.save_model(model, str(out / "openvino_model.xml"), compress_to_fp16=False)
    return "openvino_model.xml"


CONVERTERS = {"openvino": _convert_openvino}


def export(model_path: str | Path, backend: str, cache_dir: str | Path, converters: dict | None = None) -> Path:
    """The directory holding `backend`'s files for this model, exported into `cache_dir` if missing.

    Safe when several processes race: each exports into its own temporary directory and renames it into
    place; the loser removes its copy and uses the winner's. `converters` lets the benchmark add backends
    that the product does not ship (ONNX Runtime)."""
    converters = {**CONVERTERS, **(converters or {})}
    if backend not in converters:
        raise ValueError(f"no export for backend {backend!r}; choose one of {', '.join(converters)}")
    model_path = Path(model_path)
    cache_dir = Path(cache_dir)
    facts = model_facts(model_path)
    final = cache_dir / f"{model_path.name}-{backend}-{cache_key(model_path, backend)}"
    if (final / "export.json").exists():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{backend}-", dir=cache_dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the cache may be shared
    try:
        start = time.perf_counter()
        log.info("converting the embedder %s for %s into %s (once; about 15 s)", model_path, backend, final)
        model_file = converters[backend](model_path, tmp)
        for name in _TOKENIZER_FILES:
            if (model_path / name).exists():
                shutil.copy2(model_path / name, tmp / name)
        info = {"source": str(model_path.resolve()), "backend": backend, "model_file": model_file,
                "export_version": EXPORT_VERSION, "seconds": round(time.perf_counter() - start, 2), **facts}
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")  # last: marks a complete export
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not (final / "export.json").exists():
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- run time

class FastEmbedder:
    """Tokenize with `tokenizers`, run the encoder graph, mean-pool and normalise in numpy.

    Subclasses say how to run the graph (`_runner`); each thread gets its own runner, so the chat's
    queries and a feed-watch update can embed at the same time."""

    def __init__(self, export_dir: Path, threads: int | None = None):
        from tokenizers import Tokenizer

        self.export_dir = Path(export_dir)
        self.info = json.loads((self.export_dir / "export.json").read_text())
        self.backend = self.info["backend"]
        self.max_seq_length = self.info["max_seq_length"]
        self.backend_tokenizer = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        self._tok = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        self._tok.enable_truncation(max_length=self.max_seq_length)
        self._tok.no_padding()  # padded per batch below, to the longest text of the batch
        self._tokenizer = None
        self.threads = threads or int(os.environ.get("RAG_EMBED_THREADS", 0)) or os.cpu_count() or 1
        self._local = threading.local()

    def _runner(self):
        """A callable {input name: int64 array} -> token embeddings [batch, sequence, hidden]."""
        raise NotImplementedError

    def _run(self, feeds: dict) -> np.ndarray:
        run = getattr(self._local, "run", None)
        if run is None:
            run = self._local.run = self._runner()
        return run(feeds)

    @property
    def tokenizer(self):
        """A transformers tokenizer (what code written for SentenceTransformer expects), on first use."""
        if self._tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.export_dir))
            self._tokenizer.model_max_length = self.max_seq_length
        return self._tokenizer

    def get_embedding_dimension(self) -> int:
        return self.info["hidden_size"]

    get_sentence_embedding_dimension = get_embedding_dimension

    def _batch(self, encs: list) -> np.ndarray:
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for row, e in enumerate(encs):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        tokens = self._run({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        m = mask[:, :, None].astype(np.float32)
        return (tokens * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)

    def encode(self, sentences, batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, show_progress_bar: bool | None = None, **_ignored):
        """Like SentenceTransformer.encode for a str or list of str: longest first, so batches pad little."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if not texts:
            return np.zeros((0, self.get_embedding_dimension()), dtype=np.float32)
        encs = self._tok.encode_batch(texts)
        order = np.argsort([-len(e.ids) for e in encs], kind="stable")
        out = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        for s in starts:
            idx = order[s:s + batch_size]
            out[idx] = self._batch([encs[i] for i in idx])
        if normalize_embeddings or self.info.get("normalize"):
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        if not convert_to_numpy:
            out = list(out)
        return out[0] if single else out


class OpenVINOEmbedder(FastEmbedder):
    def __init__(self, export_dir: Path, threads: int | None = None):
        super().__init__(export_dir, threads)
        core = import_openvino().Core()
        self._compiled = core.compile_model(str(self.export_dir / self.info["model_file"]), "CPU",
                                            {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"})
        self.precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))

    def _runner(self):
        request = self._compiled.create_infer_request()
        return lambda feeds: request.infer(feeds)[0]


RUNTIMES = {"openvino": OpenVINOEmbedder}


def load_fast_embedder(model_path: str | Path, backend: str, cache_dir: str | Path, threads: int | None = None):
    """An embedder for `backend` ("torch" or "openvino"), exporting once into cache_dir."""
    if backend == "torch":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(model_path), device="cpu")
    if backend not in RUNTIMES:
        raise ValueError(f"unknown embed backend {backend!r}; one of {', '.join(BACKENDS)}")
    return RUNTIMES[backend](export(model_path, backend, cache_dir), threads)
