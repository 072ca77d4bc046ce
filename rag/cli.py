"""The `rag` command line: index, ask, eval."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .errors import RagError
from .settings import load_settings

log = logging.getLogger("rag")


def _index(args, settings) -> int:
    from .index import Index, stats
    from .indexer import update_index

    if args.status:
        print(json.dumps(stats(Index.open(settings)), indent=2))
        return 0
    if args.watch:
        return _watch(args, settings)
    report = update_index(settings, feed=args.feed, rebuild=args.rebuild, remove=tuple(args.remove or ()))
    print(report.summary())
    return 0


def _watch(args, settings) -> int:
    """`rag index --watch`: keep the index up to date with the feed until interrupted, one line per check."""
    from .watch import FeedWatcher

    if args.rebuild or args.remove:
        raise RagError("--watch cannot be combined with --rebuild or --remove")

    def show(status):
        print(status.message, flush=True)

    settings = settings.replace(watch_interval=args.interval)  # validated like any setting
    watcher = FeedWatcher(settings, feed=args.feed, on_status=show)

    def interrupt(signum, frame):
        # installed explicitly: a process started in the background by a non-interactive shell inherits SIGINT
        # ignored, and Python keeps it so (a fresh-clone test run launched that way saw the watch ignore the
        # test's SIGINT). The stop event also ends the loop if the KeyboardInterrupt is dropped (raised inside
        # a finalizer, say).
        watcher.stop_soon()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        watcher.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    raise KeyboardInterrupt  # stopped by the handler after a dropped KeyboardInterrupt: exit as interrupted


def _read_history(path: str):
    """The JSON of a --history file; what is wrong with it names the file and the position."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise RagError(f"{path}: cannot read the history file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise RagError(f"{path}: the history file is not UTF-8 text (byte {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RagError(f"{path}: the history file is not valid JSON ({e.msg}: line {e.lineno}, "
                       f"column {e.colno})") from e


def _ask(args, settings) -> int:
    from .answer import Chat
    from .chunking import section_title

    history = _read_history(args.history) if args.history else None
    chat = Chat(settings)
    shown = ""
    answer = None
    for answer in chat.stream(args.question, history, post=args.post, mode=args.mode, k=args.k):
        if not args.json and not answer.done:
            print(answer.answer[len(shown):], end="", flush=True)
            shown = answer.answer
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
        return 0
    if shown and answer.answer.startswith(shown):
        print(answer.answer[len(shown):])
    elif shown:  # the model's draft was checked sentence by sentence: show what survived
        print(f"\n\nChecked against the posts:\n{answer.answer}")
    else:
        print(answer.answer)
    for c in answer.citations:
        print(f"  [{c.n}] {c.post_title} — {section_title(c.section)}\n      {c.url}")
    if answer.suggestions and answer.refused:
        print("  Try: " + " | ".join(answer.suggestions))
    t = answer.timings
    print(f"  ({t.get('retrieve', 0):.2f}s retrieve, {t.get('first_token', 0):.2f}s first token, "
          f"{t.get('total', 0):.2f}s total, mode {answer.mode})", file=sys.stderr)
    return 0


def _eval(args, settings) -> int:
    from .eval.evaluate import EvalRun, run_eval

    return run_eval(EvalRun(tuple(args.questions), args.out, args.limit, args.mode, args.compare, args.gen_limit),
                    settings)


def _calibrate(args, settings) -> int:
    from .eval.calibrate import calibrate

    result = calibrate(settings, args.questions, args.out, args.test, args.model)
    rows = [("dev, cross-validated", result["cross_validated"]),
            ("dev, first look only", result["first_look_only"]),
            ("dev, single cosine", result["single_cosine_cross_dev"])]
    if "test" in result:
        rows += [("test, model", result["test"]["model"]), ("test, single cosine", result["test"]["single_cosine"])]
    for name, r in rows:
        print(f"{name:>22}: threshold {r['threshold']:.2f}  refusal {r['refusal']:.3f} {_interval(r['refusal_ci'])}  "
              f"false refusal {r['false_refusal']:.3f} {_interval(r['false_refusal_ci'])}")
    print(f"model written to {args.model or settings.coverage_model}; "
          f"figures in {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _prepare(args, settings) -> int:
    """Join, verify and convert the configured generator once and load the embedder, with progress bars, so
    that the app's first answer does not wait for it (`make run` calls this)."""
    import time

    import torch

    from .embedder import load_embedder
    from .generate import generator_location, prepare_weights, resolve_dtype

    start = time.perf_counter()
    load_embedder(settings.embedder, settings.device, settings.embed_backend)
    loc = generator_location(settings.generator)
    dtype = resolve_dtype(settings.generator_dtype)
    path = prepare_weights(loc, torch.float32 if dtype == "int8" else dtype)
    print(f"embedder {settings.embedder} ready; generator {loc.name} ready in {path} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def _interval(ci) -> str:
    return f"[{float(ci[0]):.2f}, {float(ci[1]):.2f}]" if ci else ""


def _practice(args, settings) -> int:
    from dataclasses import asdict

    from .practice import LikelihoodJudge, Practice, PracticeError, format_grade, format_stats, session

    practice = Practice(settings, db_path=args.db, judge=None if args.fast else LikelihoodJudge())  # loads on first grade
    if args.stats:
        stats = practice.stats()
        print(json.dumps([asdict(s) for s in stats], ensure_ascii=False) if args.json else format_stats(stats))
        return 0
    if args.grade is not None:
        if args.answer is None:
            raise PracticeError("--grade needs --answer TEXT (or --answer - to read the answer from stdin)")
        grade = practice.grade(args.grade, sys.stdin.read() if args.answer == "-" else args.answer)
        print(json.dumps(grade.to_json(), ensure_ascii=False) if args.json else format_grade(grade))
        return 0
    if args.answer is not None:
        raise PracticeError("--answer needs --grade ID (the id `rag practice --json` printed)")
    if args.json:
        print(json.dumps(practice.next_question(post=args.post).to_json(), ensure_ascii=False))
        return 0
    return session(practice, args.post, color=sys.stdout.isatty())


def _feedback(args, settings) -> int:
    from .feedback import FeedbackStore, candidates, known_questions

    store = FeedbackStore(args.file or settings.feedback_file)
    records = store.records()
    items = candidates(records, known_questions(args.skip or []))
    lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)
    up = sum(r.get("vote") == "up" for r in records)
    print(f"{len(records)} votes ({up} up, {len(records) - up} down, {sum(bool(r.get('comment')) for r in records)} "
          f"with a comment) in {store.path} -> {len(items)} candidate questions"
          + (f" in {args.out}" if args.out else "") + "; each has review.status 'todo': check it before adding it "
          "to an eval set", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .eval import SPLITS
    from .modes import MODES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--index", metavar="DIR", help="index directory (default: RAG_INDEX_DIR or ./index)")
    common.add_argument("--config", metavar="FILE", help="settings file (default: RAG_CONFIG or ./rag.toml)")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")

    parser = argparse.ArgumentParser(prog="rag", description="Offline Q&A over a blog feed.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", parents=[common], help="build or update the index from a feed")
    p.add_argument("--feed", metavar="PATH_OR_URL", help="RSS/Atom file or http(s) URL (default: bundled corpus)")
    p.add_argument("--rebuild", action="store_true", help="re-embed everything (keeps posts missing from the feed)")
    p.add_argument("--remove", metavar="GUID", action="append", help="remove a post from the index on purpose")
    p.add_argument("--status", action="store_true", help="show posts, chunks, build time and manifest")
    p.add_argument("--watch", action="store_true",
                   help="keep polling the feed and update the index when it changes (Ctrl-C stops)")
    p.add_argument("--interval", type=float, metavar="SECONDS",
                   help="with --watch: seconds between polls (default: the watch_interval setting)")
    p.set_defaults(run=_index)

    p = sub.add_parser("ask", parents=[common], help="answer a question from the posts")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--history", metavar="FILE", help="earlier turns: a JSON list of [question, answer] pairs")
    p.add_argument("--mode", choices=list(MODES), help="answer mode (default: settings)")
    p.add_argument("--post", metavar="GUID", help="only search this post")
    p.add_argument("-k", type=int, help="sections to retrieve")
    p.set_defaults(run=_ask)

    p = sub.add_parser("eval", parents=[common], help="score retrieval and answers on labeled questions")
    p.add_argument("--questions", nargs="+", default=list(SPLITS), metavar="FILE",
                   help="JSONL question files, each scored on its own (default: %(default)s)")
    p.add_argument("--out", default="eval/runs/latest", help="output directory (default: %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--compare", action="store_true", help="run several settings side by side")
    p.add_argument("--gen-limit", type=int, default=0,
                   help="with --compare: at most N questions per generator mode, stratified by kind (default: all)")
    p.add_argument("--mode", choices=list(MODES), help="answer mode (default: settings)")
    p.set_defaults(run=_eval)

    p = sub.add_parser("calibrate", parents=[common], help="fit the covered/not-covered decision on dev questions")
    p.add_argument("--questions", default="eval/dev.jsonl", help="dev questions to fit on (default: %(default)s)")
    p.add_argument("--test", default="eval/test.jsonl",
                   help="questions to report the fitted decision on, never fit on (default: %(default)s)")
    p.add_argument("--out", default="eval/calibration.json", help="where to write the figures (default: %(default)s)")
    p.add_argument("--model", help="where to write the model (default: the coverage_model setting)")
    p.set_defaults(run=_calibrate)
    p = sub.add_parser("prepare", parents=[common], help="assemble, verify and convert the models once (set-up)")
    p.set_defaults(run=_prepare)

    p = sub.add_parser("practice", parents=[common], help="drill the posts' interview questions")
    p.add_argument("--json", action="store_true", help="print one question (or the grade, or the stats) as JSON")
    p.add_argument("--post", metavar="GUID_OR_TITLE", help="only questions of this post (guid or title substring)")
    p.add_argument("--grade", metavar="ID", help="grade an answer to question ID (needs --answer)")
    p.add_argument("--answer", metavar="TEXT", help="the answer to grade; '-' reads it from stdin")
    p.add_argument("--stats", action="store_true", help="show progress per post")
    p.add_argument("--db", metavar="FILE", help="progress file (default: <index>/practice.sqlite)")
    p.add_argument("--fast", action="store_true", help="grade without the 0.5B model (no model load; less "
                   "accurate, docs/practice.md)")
    p.set_defaults(run=_practice)

    p = sub.add_parser("feedback", parents=[common],
                       help="turn the app's thumbs-up/down feedback into candidate eval questions for review")
    p.add_argument("--out", metavar="FILE", help="write the candidates (JSONL) here instead of to stdout")
    p.add_argument("--file", metavar="FILE", help="feedback file (default: the feedback_path setting, "
                                                  "<index>/feedback.jsonl)")
    p.add_argument("--skip", metavar="FILE", action="append",
                   help="leave out questions already in this eval file (repeatable), e.g. eval/dev.jsonl")
    p.set_defaults(run=_feedback)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "sentence_transformers", "filelock", "faiss", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .errors import RagError

    try:
        settings = load_settings(args.config, index_dir=args.index)
        return args.run(args, settings)
    except RagError as e:
        print(f"rag: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
