"""Differential corpus: thyme's jail gives what upstream Thyme's sandbox gave, step for step.

The cases are in data/fidelity_corpus.toml (the upstream README example, upstream's sandbox
self-test and variants for every class of difference found in issue 12). The expected values in
data/fidelity_expected.json were obtained ONCE by running upstream's own
`execute_code_in_sandbox` (yfzhang114/Thyme, swift/trainers/sandbox.py; commit and library
versions recorded in the file) in a scratch virtualenv outside this project on the same synthetic
images, with upstream's code regex extracting the code from the same reply text, one
temp_output_dir per question and the execution context carried between steps. Upstream's code is
not part of thyme; data/record_upstream_expected.py is the recording script (run outside the
project). Every case runs here through the real jail (the backend `auto` picks).
Cases marked `improvement` are where thyme deliberately differs (docs/sandbox.md lists them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import fidelity_support as fs

pytestmark = pytest.mark.slow

CASES = fs.load_corpus()
EXPECTED = fs.load_expected()


def test_corpus_is_complete() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)) >= 40
    assert set(ids) == set(EXPECTED["cases"]), "re-record fidelity_expected.json after editing the corpus"
    for case in CASES:
        assert len(EXPECTED["cases"][case["id"]]["steps"]) == len(case["steps"])
        if "improvement" in case:
            assert "thyme_text" in case, case["id"]
    improvements = {c["improvement"] for c in CASES if "improvement" in c}
    docs = (Path(__file__).resolve().parent.parent / "docs" / "sandbox.md").read_text()
    for text in improvements:
        assert text.split(":")[0] in docs, f"improvement not documented in docs/sandbox.md: {text}"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_matches_upstream(case: dict[str, Any], sandbox_backend: str, tmp_path: Path) -> None:
    got = fs.run_in_thyme(case, sandbox_backend, tmp_path)
    problems = fs.compare(case, EXPECTED["cases"][case["id"]]["steps"], got)
    assert not problems, "\n".join(problems)
