"""The harness that measures the product (`rag eval`, `rag calibrate`); the product never imports it."""

SPLITS = ("eval/dev.jsonl", "eval/test.jsonl")  # tune on dev; test is reported, never tuned on
