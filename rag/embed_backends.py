"""Faster CPU embedding for the packaged sentence-transformers model: ONNX Runtime or OpenVINO, no torch at run time.

`load_fast_embedder(model_path, backend, cache_dir)` returns an object that quacks like the parts of
`SentenceTransformer` that `rag` uses: `.encode(texts, batch_size, normalize_embeddings=True,
convert_to_numpy=True, show_progress_bar=...)`, `.tokenizer` (a transformers fast tokenizer, loaded on first
use, so a process that only embeds queries never imports transformers) and `.get_embedding_dimension()`.

The ONNX graph is exported once from the local weights (torch + transformers, which `rag` already depends
on) into `cache_dir`, atomically (a temporary directory renamed into place), and loaded from there on every
later call; nothing is fetched from a hub. Backends:

  torch        sentence-transformers as today (the reference)
  onnx         ONNX Runtime, fp32 graph with ORT's BERT fusions (attention, LayerNorm, GELU); cosine ~1.0
  onnx-int8    the same graph, weights dynamically quantized to int8 (MatMul/Gemm); faster, cosine ~0.99
  openvino     OpenVINO runtime compiling the fp32 ONNX graph

Why not `SentenceTransformer(path, backend="onnx" | "openvino")`: those go through optimum-onnx (needs
transformers<4.58) and optimum-intel (needs transformers<5.6), neither installable beside transformers 5.25;
and sentence-transformers imports torch anyway, which is most of the start-up cost (docs/embedding-backends.md).

Only the architecture the packaged model has is handled: a BERT encoder with mean pooling (and, for the
modules.json the model ships, normalisation), as sentence-transformers/all-MiniLM-L6-v2 is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
# Bump when the exported files would differ for the same weights (export code, opset, fusion options).
EXPORT_VERSION = 1
OPSET = 17
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


# ---------------------------------------------------------------------------------------------- model facts

def _model_facts(model_path: Path) -> dict:
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


def _cache_key(model_path: Path, backend: str) -> str:
    """Cheap to compute on every load (no hashing of the 90 MB weights): path, sizes and mtimes, configs."""
    h = hashlib.sha256(f"v{EXPORT_VERSION} opset{OPSET} {backend} {model_path.resolve()}".encode())
    for f in sorted(model_path.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- export

def _export_fp32(model_path: Path, out: Path) -> Path:
    """BERT -> ONNX (token embeddings), dynamic batch and sequence axes, with torch's TorchScript exporter."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    path = out / "model_raw.onnx"
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        kwargs = dict(input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["token_embeddings"], opset_version=OPSET,
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                    "token_embeddings": axes})
        try:
            torch.onnx.export(Encoder(model), (ids, ids, torch.zeros_like(ids)), str(path), dynamo=False, **kwargs)
        except TypeError:  # an older torch without the dynamo switch
            torch.onnx.export(Encoder(model), (ids, ids, torch.zeros_like(ids)), str(path), **kwargs)
    return path


def _optimize(raw: Path, out: Path, facts: dict) -> Path:
    """ORT's BERT fusions, saved so later loads skip them (ORT_ENABLE_ALL graph opts also run at load)."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(raw), model_type="bert", num_heads=facts["num_heads"],
                         hidden_size=facts["hidden_size"], opt_level=1, use_gpu=False)
    path = out / "model.onnx"
    opt.save_model_to_file(str(path))
    return path


def _quantize(fp32: Path, out: Path) -> Path:
    """Dynamic int8: weights quantized per channel ahead of time, activations per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = out / "model_int8.onnx"
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return path


def _openvino_ir(fp32: Path, out: Path) -> Path:
    import openvino as ov

    path = out / "openvino_model.xml"
    ov.save_model(ov.convert_model(str(fp32)), str(path), compress_to_fp16=False)
    return path


def export(model_path: str | Path, backend: str, cache_dir: str | Path) -> Path:
    """The directory holding `backend`'s files for this model, exported into `cache_dir` if missing.

    Safe when several processes race: each exports into its own temporary directory and renames it into
    place; the loser removes its copy and uses the winner's."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"no export for backend {backend!r}; choose one of {', '.join(BACKENDS[1:])}")
    model_path = Path(model_path)
    cache_dir = Path(cache_dir)
    facts = _model_facts(model_path)
    final = cache_dir / f"{model_path.name}-{backend}-{_cache_key(model_path, backend)}"
    if (final / "export.json").exists():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{backend}-", dir=cache_dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the cache may be shared
    try:
        start = time.perf_counter()
        log.info("exporting %s for backend %s into %s (once)", model_path, backend, final)
        fp32 = _optimize(_export_fp32(model_path, tmp), tmp, facts)
        (tmp / "model_raw.onnx").unlink()
        if backend == "onnx-int8":
            model_file = _quantize(fp32, tmp)
            fp32.unlink()
        elif backend == "openvino":
            model_file = _openvino_ir(fp32, tmp)
            fp32.unlink()
        else:
            model_file = fp32
        for name in _TOKENIZER_FILES:
            if (model_path / name).exists():
                shutil.copy2(model_path / name, tmp / name)
        info = {"source": str(model_path.resolve()), "backend": backend, "model_file": model_file.name,
                "export_version": EXPORT_VERSION, "opset": OPSET, "seconds": round(time.perf_counter() - start, 2),
                **facts}
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
    """Tokenize with `tokenizers`, run the encoder graph, mean-pool and normalise in numpy."""

    def __init__(self, export_dir: Path, backend: str, threads: int | None = None):
        from tokenizers import Tokenizer

        self.export_dir = Path(export_dir)
        self.backend = backend
        self.info = json.loads((self.export_dir / "export.json").read_text())
        self.max_seq_length = self.info["max_seq_length"]
        self._tok = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        self._tok.enable_truncation(max_length=self.max_seq_length)
        self._tok.no_padding()  # padded per batch below, to the longest text of the batch
        self._tokenizer = None
        threads = threads or int(os.environ.get("RAG_EMBED_THREADS", 0)) or os.cpu_count() or 1
        model_file = str(self.export_dir / self.info["model_file"])
        if backend == "openvino":
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(model_file, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "PERFORMANCE_HINT": "LATENCY"})
            self._request = compiled.create_infer_request()
            self._run = self._run_openvino
        else:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(model_file, so, providers=["CPUExecutionProvider"])
            self._inputs = {i.name for i in self._session.get_inputs()}
            self._run = self._run_ort

    @property
    def tokenizer(self):
        """A transformers tokenizer (what `rag.chunking.Chunker` and langchain's splitter need), on first use."""
        if self._tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.export_dir))
            self._tokenizer.model_max_length = self.max_seq_length
        return self._tokenizer

    def get_embedding_dimension(self) -> int:
        return self.info["hidden_size"]

    get_sentence_embedding_dimension = get_embedding_dimension

    def _run_ort(self, feeds: dict) -> np.ndarray:
        return self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]

    def _run_openvino(self, feeds: dict) -> np.ndarray:
        return self._request.infer(feeds)[0]

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

            starts = tqdm(starts, desc="Batches")
        for s in starts:
            idx = order[s:s + batch_size]
            out[idx] = self._batch([encs[i] for i in idx])
        if normalize_embeddings or self.info.get("normalize"):
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        if not convert_to_numpy:
            out = list(out)
        return out[0] if single else out


def load_fast_embedder(model_path: str, backend: str, cache_dir: Path, threads: int | None = None):
    """An embedder for `backend` ("torch", "onnx", "onnx-int8", "openvino"), exporting once into cache_dir."""
    if backend == "torch":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(model_path), device="cpu")
    return FastEmbedder(export(model_path, backend, cache_dir), backend, threads)
