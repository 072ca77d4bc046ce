"""Split the written question set once, by a fixed seed, into dev (tune on it) and test (report it only).

    python eval/split.py   # eval/questions_v2.jsonl -> eval/dev.jsonl (appended after the v1 dev questions)
                           #                            and eval/test.jsonl

Run once on 2026-12-04; the files it wrote are committed and must not be re-split. Stratified by kind: half of
each kind to test (rounded up), the rest to dev. The v1 questions (ids without "v2-") were tuned on and stay in
dev; the v1 held-out file was consulted during tuning, so it was retired rather than moved into test.
"""

import json
import random
from collections import defaultdict
from pathlib import Path

SEED = 20261204
HERE = Path(__file__).resolve().parent


def main() -> None:
    v1 = [json.loads(line) for line in (HERE / "dev.jsonl").read_text().splitlines() if line.strip()]
    assert not any(q["id"].startswith("v2-") for q in v1), "already split"
    v2 = [json.loads(line) for line in (HERE / "questions_v2.jsonl").read_text().splitlines() if line.strip()]
    by_kind = defaultdict(list)
    for q in v2:
        by_kind[q["kind"]].append(q)
    rng = random.Random(SEED)
    dev, test = list(v1), []
    for kind in sorted(by_kind):
        qs = by_kind[kind]
        rng.shuffle(qs)
        cut = (len(qs) + 1) // 2
        test += qs[:cut]
        dev += qs[cut:]
    order = {q["id"]: i for i, q in enumerate(v2)}
    test.sort(key=lambda q: order[q["id"]])
    dev = v1 + sorted(dev[len(v1):], key=lambda q: order[q["id"]])
    for name, qs in (("dev.jsonl", dev), ("test.jsonl", test)):
        (HERE / name).write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qs))
        print(name, len(qs))


if __name__ == "__main__":
    main()
