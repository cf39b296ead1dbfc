"""Any GGUF vision repo by reference (hf.co/ORG/REPO[:QUANT]) and reproducible pulls, end to end.

File selection follows llama.cpp's rule; the repos below are laid out as real ones are (ggml-org:
one folder, several quants and projectors; unsloth/bartowski-style: quants in sub-folders, split
files, an imatrix file, the projector at the top). The real CLI runs against a real local Hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from tests.hub_fixtures import (  # noqa: F401  (fixture: tiny_files)
    MMPROJ_FILE,
    MODEL_FILE,
    repo_dir,
    tiny_files_fixture,
    write_config,
)
from tests.hub_server import COMMIT, LocalHub, Repo
from thyme_cli.errors import DownloadError
from thyme_cli.models.hub.ref import parse_reference, quant_bits, select_files, split_siblings

GGML = "ggml-org/Vision-3B-GGUF"
NESTED = "someone/Vision-7B-GGUF"

GGML_FILES = [
    "README.md",
    "Vision-3B-Q4_K_M.gguf",
    "Vision-3B-Q8_0.gguf",
    "Vision-3B-f16.gguf",
    "mmproj-Vision-3B-Q8_0.gguf",
    "mmproj-Vision-3B-f16.gguf",
]
NESTED_FILES = [
    "BF16/Vision-7B-BF16-00001-of-00002.gguf",
    "BF16/Vision-7B-BF16-00002-of-00002.gguf",
    "Q4_K_M/mmproj-Q4_K_M-oops-F32.gguf",
    "Vision-7B-IQ4_XS.gguf",
    "Vision-7B-Q4_K_S.gguf",
    "Vision-7B-Q4_K_M.imatrix.gguf",
    "imatrix_unsloth.gguf",
    "mmproj-F16.gguf",
    "mmproj-F32.gguf",
    "mmproj-BF16.gguf",
]


def _listing(paths: list[str]) -> dict[str, int]:
    return {p: 1000 + i for i, p in enumerate(paths)}


# ------------------------------------------------------------------------------- the rule itself
@pytest.mark.parametrize(
    ("text", "repo", "quant"),
    [
        ("hf.co/ggml-org/Vision-3B-GGUF:Q8_0", GGML, "Q8_0"),
        ("https://huggingface.co/ggml-org/Vision-3B-GGUF", GGML, None),
        ("ggml-org/Vision-3B-GGUF:q4_k_m", GGML, "q4_k_m"),
        ("huggingface.co/ggml-org/Vision-3B-GGUF/", GGML, None),
    ],
)
def test_references_parse(text: str, repo: str, quant: str | None) -> None:
    ref = parse_reference(text)
    assert ref is not None and ref.repo == repo and ref.quant == quant


def test_plain_names_are_not_references() -> None:
    assert parse_reference("qwen2.5-vl-7b") is None and parse_reference("a/b/c") is None


@pytest.mark.parametrize(
    ("files", "quant", "model", "mmproj"),
    [
        (GGML_FILES, None, "Vision-3B-Q4_K_M.gguf", "mmproj-Vision-3B-Q8_0.gguf"),  # 4 bits: Q8_0 is closer than f16
        (GGML_FILES, "Q8_0", "Vision-3B-Q8_0.gguf", "mmproj-Vision-3B-Q8_0.gguf"),
        (GGML_FILES, "f16", "Vision-3B-f16.gguf", "mmproj-Vision-3B-f16.gguf"),
        # never an imatrix file, even when it carries the tag; the projector from the root, closest to 4 bits
        (NESTED_FILES, "IQ4_XS", "Vision-7B-IQ4_XS.gguf", "mmproj-F16.gguf"),
        # a split model: only its first part, projector from an ancestor folder, 16 bits -> F16 (first of F16/BF16)
        (NESTED_FILES, "bf16", "BF16/Vision-7B-BF16-00001-of-00002.gguf", "mmproj-F16.gguf"),
        # no Q4_K_M or Q8_0 model (only an imatrix): the first model file
        (NESTED_FILES, None, "BF16/Vision-7B-BF16-00001-of-00002.gguf", "mmproj-F16.gguf"),
    ],
)
def test_llama_cpp_file_rule(files: list[str], quant: str | None, model: str, mmproj: str) -> None:
    chosen = select_files(_listing(files), quant)
    assert (chosen.model_file, chosen.mmproj_file) == (model, mmproj)


def test_deepest_folder_projector_wins() -> None:
    files = ["Q4_K_M/Vision-Q4_K_M.gguf", "Q4_K_M/mmproj-F32.gguf", "mmproj-Q4_K_M.gguf"]
    assert select_files(_listing(files), "Q4_K_M").mmproj_file == "Q4_K_M/mmproj-F32.gguf"


def test_quant_tag_must_be_followed_by_a_dot_or_dash() -> None:
    files = ["Vision-Q4_K_M.gguf", "Vision-Q4_K.gguf", "mmproj-f16.gguf"]
    assert select_files(_listing(files), "Q4_K").model_file == "Vision-Q4_K.gguf"


def test_bits_and_split_helpers() -> None:
    assert [quant_bits(t) for t in ("Q4_K_M", "Q8_0", "f16", "mmproj-BF16.gguf", "IQ4_XS", "F32")] == [
        4,
        8,
        16,
        16,
        4,
        32,
    ]
    assert split_siblings("a/M-00001-of-00003.gguf") == [f"a/M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("files", "quant", "message"),
    [
        (GGML_FILES, "Q2_K", "no GGUF file for quant 'Q2_K' (available: F16, Q4_K_M, Q8_0)"),
        (["Vision-Q4_K_M.gguf"], None, "no vision projector"),
        (["mmproj-f16.gguf", "README.md"], None, "no GGUF model file"),
        (["M-Q4_K_M-00001-of-00002.gguf", "mmproj-f16.gguf"], None, "lacks part(s): M-Q4_K_M-00002-of-00002.gguf"),
    ],
)
def test_repos_that_do_not_fit_say_why(files: list[str], quant: str | None, message: str) -> None:
    with pytest.raises(DownloadError, match=None) as info:
        select_files(_listing(files), quant)
    assert message in info.value.message


# ------------------------------------------------------------------- the CLI against a local Hub
@pytest.fixture
def ref_hub(tiny_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """Two repos laid out like real GGUF repos; the .gguf files the tests run are the real tiny pair."""
    model, mmproj = tiny_files[MODEL_FILE], tiny_files[MMPROJ_FILE]
    ggml = {name: (mmproj if "mmproj" in name else model) for name in GGML_FILES if name.endswith(".gguf")}
    ggml["README.md"] = b"# readme\n"
    nested = {name: f"bytes of {name}".encode() * 50 for name in NESTED_FILES}
    with LocalHub({GGML: Repo(files=ggml), NESTED: Repo(files=nested, commit="c" * 40)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def test_pull_by_reference_registers_records_the_commit_and_lists(ref_hub: LocalHub, run_thyme: RunThyme) -> None:
    result = run_thyme("models", "pull", f"hf.co/{GGML}:q8_0")
    assert result.returncode == 0, result.stderr
    assert "Vision-3B-Q8_0.gguf + mmproj-Vision-3B-Q8_0.gguf (protocol generic)" in result.stderr
    name = f"hf.co/{GGML}:Q8_0"
    rows = {r["name"]: r for r in json.loads(run_thyme("models", "list", "--json").stdout)}
    assert rows[name]["installed"] is True and rows[name]["protocol"] == "generic"
    info = json.loads(run_thyme("models", "info", name, "--json").stdout)
    assert info["commit"] == COMMIT and info["model_file"] == "Vision-3B-Q8_0.gguf" and info["pulled_at"]
    paths = run_thyme("models", "path", f"{GGML}:Q8_0").stdout.split()  # the short form finds the entry
    assert [Path(p).name for p in paths] == ["Vision-3B-Q8_0.gguf", "mmproj-Vision-3B-Q8_0.gguf"]
    # Only the two chosen files were fetched, and pulling again needs no network.
    fetched = {r.path.rsplit("/", 1)[-1] for r in ref_hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert fetched == {"Vision-3B-Q8_0.gguf", "mmproj-Vision-3B-Q8_0.gguf"}
    again = run_thyme("models", "pull", f"hf.co/{GGML}:Q8_0", env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and "already installed" in again.stderr
    removed = run_thyme("models", "rm", name, "--yes")
    assert removed.returncode == 0, removed.stderr
    names = {r["name"] for r in json.loads(run_thyme("models", "list", "--json").stdout)}
    assert name not in names


def test_split_model_in_a_subfolder_pulls_every_part(ref_hub: LocalHub, run_thyme: RunThyme) -> None:
    result = run_thyme("models", "pull", f"{NESTED}:BF16")
    assert result.returncode == 0, result.stderr
    snapshot = repo_dir(NESTED) / "snapshots" / ("c" * 40)
    # the Hub lists files sorted: mmproj-BF16 comes before mmproj-F16, both 16 bits
    for part in (
        "BF16/Vision-7B-BF16-00001-of-00002.gguf",
        "BF16/Vision-7B-BF16-00002-of-00002.gguf",
        "mmproj-BF16.gguf",
    ):
        assert (snapshot / part).read_bytes() == ref_hub.repos[NESTED].files[part]
    info = json.loads(run_thyme("models", "info", f"hf.co/{NESTED}:BF16", "--json").stdout)
    assert info["installed"] is True and info["commit"] == "c" * 40
    parts = sum(len(ref_hub.repos[NESTED].files[p]) for p in NESTED_FILES if p.startswith("BF16/"))
    assert info["size_on_disk"] == parts + len(ref_hub.repos[NESTED].files["mmproj-BF16.gguf"])


def test_overrides_and_protocol(ref_hub: LocalHub, run_thyme: RunThyme) -> None:
    result = run_thyme(
        "models",
        "pull",
        f"hf.co/{NESTED}",
        "--model-file",
        "Vision-7B-Q4_K_S.gguf",
        "--mmproj-file",
        "mmproj-BF16.gguf",
        "--protocol",
        "thyme",
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(run_thyme("models", "info", f"hf.co/{NESTED}:Q4_K_S", "--json").stdout)
    assert (info["model_file"], info["mmproj_file"], info["protocol"]) == (
        "Vision-7B-Q4_K_S.gguf",
        "mmproj-BF16.gguf",
        "thyme",
    )


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        ([f"hf.co/{GGML}:Q2_K"], 1, "no GGUF file for quant 'Q2_K' (available: F16, Q4_K_M, Q8_0)"),
        (["hf.co/nobody/Missing-GGUF"], 1, "not found"),
        (["tiny-model", "--model-file", "x.gguf"], 2, "apply to Hub references"),
        ([f"hf.co/{GGML}", "--protocol", "chatml"], 2, "--protocol must be one of"),
    ],
)
def test_bad_references_get_one_clear_line(
    ref_hub: LocalHub, run_thyme: RunThyme, args: list[str], code: int, line: str
) -> None:
    result = run_thyme("models", "pull", *args)
    assert result.returncode == code, result.stderr
    assert line in result.stderr and "Traceback" not in result.stderr


def test_ask_runs_a_reference_after_downloading_it(
    ref_hub: LocalHub, run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    image = tmp_path / "small.png"
    Image.new("RGB", (64, 48), "white").save(image)
    ref = f"hf.co/{GGML}"
    refused = run_thyme("ask", str(image), "what is it", "--model", ref)  # not a terminal: never downloads silently
    assert refused.returncode == 1 and f"thyme models pull hf.co/{GGML}:Q4_K_M" in refused.stderr
    result = run_thyme(
        "ask",
        str(image),
        "what is it",
        "--model",
        ref,
        "--yes",
        "--protocol",
        "thyme",
        "--max-tokens",
        "16",
        "--max-turns",
        "1",
        "--ctx",
        "2048",
        "--json",
    )
    assert result.returncode in (0, 3), result.stderr
    run = json.loads(result.stdout)
    assert run["model"] == f"hf.co/{GGML}:Q4_K_M" and run["protocol"] == "thyme"
    assert run["counters"]["images_encoded"] >= 1
    rows = {r["name"]: r for r in json.loads(run_thyme("models", "list", "--json").stdout)}
    assert rows[f"hf.co/{GGML}:Q4_K_M"]["installed"] is True


def test_a_pinned_revision_is_what_gets_pulled(ref_hub: LocalHub, run_thyme: RunThyme) -> None:
    write_config(
        f'\n[models.pinned]\ndescription = "pinned"\nrepo = "{GGML}"\nmodel_file = "Vision-3B-Q8_0.gguf"\n'
        f'mmproj_file = "mmproj-Vision-3B-f16.gguf"\nrevision = "{COMMIT}"\n'
    )
    result = run_thyme("models", "pull", "pinned")
    assert result.returncode == 0, result.stderr
    heads = [r.path for r in ref_hub.requests if r.method == "HEAD"]
    assert heads and all(f"/resolve/{COMMIT}/" in p for p in heads)
    assert json.loads(run_thyme("models", "info", "pinned", "--json").stdout)["commit"] == COMMIT


def test_builtin_sizes_are_true() -> None:
    from thyme_cli.models.registry import load_registry

    assert load_registry(Path("/nonexistent/config.toml")).models["qwen2.5-vl-3b"].size_gb == 3.27


def test_batch_runs_a_pulled_reference_offline(
    ref_hub: LocalHub, run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    assert run_thyme("models", "pull", f"{GGML}:Q8_0", "-q").returncode == 0
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (64, 48), "white").save(folder / "a.png")
    out = tmp_path / "r.jsonl"
    result = run_thyme(
        "batch",
        str(folder),
        "-q",
        "what is it",
        "--model",
        f"hf.co/{GGML}:q8_0",
        "--max-tokens",
        "16",
        "--max-turns",
        "1",
        "--ctx",
        "4096",
        "-o",
        str(out),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode in (0, 3), result.stderr
    (line,) = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert line["model"] == f"hf.co/{GGML}:Q8_0" and line["error"] is None
