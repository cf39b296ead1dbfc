"""Removing a user entry from config.toml: only that table goes, everything else stays byte for byte."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thyme_cli.errors import ConfigError
from thyme_cli.models.registry import remove_user_model, upsert_user_model

NAMES = st.from_regex(r"[a-z][a-z0-9._-]{0,12}", fullmatch=True)


def _entry(name: str, comment: str) -> str:
    return (
        f"# {comment}\n[models.{json.dumps(name)}]\n"
        f'repo = "org/{name}"\nmodel_file = "m.gguf"\nmmproj_file = "p.gguf"\n\n'
    )


@settings(max_examples=60, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=5, unique=True), pick=st.integers(min_value=0))
def test_only_the_named_table_is_removed(tmp_path_factory: pytest.TempPathFactory, names: list[str], pick: int) -> None:
    config = tmp_path_factory.mktemp("cfg") / "config.toml"
    gone = names[pick % len(names)]
    text = '# top comment\n[defaults]\nmodel = "x"\n\n' + "".join(_entry(n, f"about {n}") for n in names)
    config.write_text(text)
    remove_user_model(gone, config)
    after = config.read_text()
    parsed = tomllib.loads(after)
    assert set(parsed.get("models", {})) == set(names) - {gone}
    assert parsed["defaults"] == {"model": "x"}
    removed_lines = [ln for ln in text.splitlines() if ln not in after.splitlines()]
    assert all(gone in ln or ln.startswith(("repo", "model_file", "mmproj_file")) for ln in removed_lines)
    for n in names:  # every comment stays, even the removed entry's (it is outside its table)
        assert f"# about {n}" in after


def test_an_entry_it_cannot_cut_out_safely_is_left_alone(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = '[models]\nmine = { model_path = "/a.gguf", mmproj_path = "/b.gguf" }\n'
    config.write_text(text)
    with pytest.raises(ConfigError, match="automatically"):
        remove_user_model("mine", config)
    assert config.read_text() == text
    assert not config.with_name("config.toml.bak").exists()


def test_an_unknown_entry_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(_entry("a", "x"))
    with pytest.raises(ConfigError, match=r"no \[models\.b\] entry"):
        remove_user_model("b", config)


def test_updating_an_entry_keeps_comments_and_other_entries(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = "# top comment\n" + _entry("a", "about a") + _entry("b", "about b").replace("\n\n", "  # mine\n\n", 1)
    config.write_text(text)
    upsert_user_model("b", {"model_file": "q.gguf"}, config)
    upsert_user_model("c", {"repo": "org/c", "model_file": "m.gguf", "mmproj_file": "p.gguf"}, config)
    after = config.read_text()
    for kept in ("# top comment", "# about a", "# about b", "# mine", 'repo = "org/a"'):
        assert kept in after
    parsed = tomllib.loads(after)["models"]
    assert parsed["b"] == {"repo": "org/b", "model_file": "q.gguf", "mmproj_file": "p.gguf"}
    assert list(parsed) == ["a", "b", "c"]
    assert config.with_name("config.toml.bak").read_text() == text
