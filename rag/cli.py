"""The `rag` command line: index, ask, eval."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .settings import load_settings

log = logging.getLogger("rag")


def _index(args, settings) -> int:
    from .index import Index, stats
    from .indexer import update_index

    if args.status:
        print(json.dumps(stats(Index.open(settings)), indent=2))
        return 0
    report = update_index(settings, feed=args.feed, rebuild=args.rebuild, remove=tuple(args.remove or ()))
    print(report.summary())
    return 0


def _ask(args, settings) -> int:
    from .answer import Chat
    from .chunking import section_title

    try:
        history = json.loads(open(args.history, encoding="utf-8").read()) if args.history else None
    except OSError as e:
        raise ValueError(f"{args.history}: cannot read the history file ({e.strerror})") from e
    if history is not None and not (isinstance(history, list) and all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in history)):
        raise ValueError(f"{args.history}: history must be a JSON list of [question, answer] pairs")
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
    print(answer.answer[len(shown):] if shown else answer.answer)
    for c in answer.citations:
        print(f"  [{c.n}] {c.post_title} — {section_title(c.section)}\n      {c.url}")
    if answer.suggestions and answer.refused:
        print("  Try: " + " | ".join(answer.suggestions))
    t = answer.timings
    print(f"  ({t.get('retrieve', 0):.2f}s retrieve, {t.get('first_token', 0):.2f}s first token, "
          f"{t.get('total', 0):.2f}s total, mode {answer.mode})", file=sys.stderr)
    return 0


def _eval(args, settings) -> int:
    from .evaluate import run_eval

    return run_eval(args, settings)


def _calibrate(args, settings) -> int:
    from .calibrate import calibrate

    result = calibrate(settings, args.questions, args.out, args.holdout)
    rows = [("current", result["current"]), ("chosen", result["chosen"])]
    if "holdout" in result:
        rows += [("held-out at chosen", result["holdout"]["at_chosen"]),
                 ("held-out at current", result["holdout"]["at_current"])]
    for name, r in rows:
        print(f"{name:>22}: threshold {r['threshold']:.2f}  refusal accuracy {r['refusal_accuracy']:.3f}  "
              f"false refusals {r['false_refusal']:.3f}")
    print(f"set refusal_threshold = {result['chosen']['threshold']:.2f} in rag.toml to use the chosen one; "
          f"sweep and plot written to {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(run=_index)

    p = sub.add_parser("ask", parents=[common], help="answer a question from the posts")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--history", metavar="FILE", help="earlier turns: a JSON list of [question, answer] pairs")
    p.add_argument("--mode", choices=("extractive", "grounded", "free"), help="answer mode (default: settings)")
    p.add_argument("--post", metavar="GUID", help="only search this post")
    p.add_argument("-k", type=int, help="sections to retrieve")
    p.set_defaults(run=_ask)

    p = sub.add_parser("eval", parents=[common], help="score retrieval and answers on labeled questions")
    p.add_argument("--questions", default="eval/questions.jsonl", help="JSONL questions (default: %(default)s)")
    p.add_argument("--out", default="eval/runs/latest", help="output directory (default: %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--compare", action="store_true", help="run several settings side by side")
    p.add_argument("--mode", choices=("extractive", "grounded", "free"), help="answer mode (default: settings)")
    p.set_defaults(run=_eval)

    p = sub.add_parser("calibrate", parents=[common], help="choose the refusal threshold from labeled questions")
    p.add_argument("--questions", default="eval/questions.jsonl", help="JSONL questions (default: %(default)s)")
    p.add_argument("--holdout", default="eval/questions_holdout.jsonl",
                   help="questions to check the chosen threshold on (default: %(default)s)")
    p.add_argument("--out", default="eval/calibration.json", help="where to write the sweep (default: %(default)s)")
    p.set_defaults(run=_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "sentence_transformers", "filelock", "faiss", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .errors import UserError

    try:
        settings = load_settings(args.config, index_dir=args.index)
        return args.run(args, settings)
    except UserError as e:
        print(f"rag: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
