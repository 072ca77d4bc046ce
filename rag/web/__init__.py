"""The browser app: the Chat and Practice tabs (Gradio), their script and style sheet, and the shared
server-side state (sessions, the model loader, index status). `app.py` puts them together on one server
with the OpenAI-compatible API (rag/openai_api.py)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")
