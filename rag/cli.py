"""The `rag` command line: index, ask, eval."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

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
