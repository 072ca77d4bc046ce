from pathlib import Path

import pytest

from rag.settings import Settings, SettingsError, load_settings


def test_precedence_defaults_toml_env_flags(tmp_path, monkeypatch):
    config = tmp_path / "rag.toml"
    config.write_text('[rag]\ntop_k = 7\nanswer_mode = "free"\nindex_dir = "from-toml"\n')
    assert load_settings(config=tmp_path / "none.toml").top_k == Settings().top_k
    s = load_settings(config=config)
    assert (s.top_k, s.answer_mode, s.index_dir) == (7, "free", Path("from-toml"))
    monkeypatch.setenv("RAG_TOP_K", "9")
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "env-index"))
    s = load_settings(config=config)
    assert (s.top_k, s.answer_mode, s.index_dir) == (9, "free", tmp_path / "env-index")
    s = load_settings(config=config, top_k=3, index_dir=None)  # a flag left unset does not override
    assert (s.top_k, s.index_dir) == (3, tmp_path / "env-index")
    assert s.feedback_file == tmp_path / "env-index" / "feedback.jsonl"


def test_bad_settings_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "rag.toml").write_text("nonsense = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'nonsense'"):
        load_settings(config=tmp_path / "rag.toml")
    monkeypatch.setenv("RAG_TOP_K", "many")
    with pytest.raises(SettingsError, match="top_k='many' is not a valid int"):
        load_settings(config=tmp_path / "none.toml")
    monkeypatch.delenv("RAG_TOP_K")
    monkeypatch.setenv("RAG_GENERATOR_SERIAL", "false")  # a word, not bool("false") == True
    assert load_settings(config=tmp_path / "none.toml").generator_serial is False
    monkeypatch.setenv("RAG_GENERATOR_SERIAL", "maybe")
    with pytest.raises(SettingsError, match="generator_serial='maybe' is not true or false"):
        load_settings(config=tmp_path / "none.toml")


@pytest.mark.parametrize("values, message", [
    ({"fusion": "rfr"}, "unknown fusion 'rfr'; one of convex, rrf, dense, bm25"),
    ({"answer_mode": "creative"}, "unknown answer mode 'creative'; one of "),
    ({"top_k": 0}, "top_k must be at least 1, not 0"),
    ({"dense_weight": 1.5}, "dense_weight must be between 0 and 1, not 1.5"),
])
def test_settings_refuse_values_a_run_would_trip_over(tmp_path, values, message):
    key, value = next(iter(values.items()))
    (tmp_path / "rag.toml").write_text(f"[rag]\n{key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings(config=tmp_path / "rag.toml")
    with pytest.raises(SettingsError):
        Settings(**values)
