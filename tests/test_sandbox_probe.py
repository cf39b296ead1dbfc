"""Backend probing and selection: real launchers, and a launcher that cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_sandbox_helpers import make_image
from thyme_cli.errors import SandboxUnavailable, UsageError
from thyme_cli.sandbox.host import factory
from thyme_cli.sandbox.host.backends import BwrapBackend, NsjailBackend, find_binary
from thyme_cli.sandbox.host.factory import probe_backends, select_backend
from thyme_cli.sandbox.host.limits import Limits

pytestmark = pytest.mark.slow


def test_probe_reports_every_backend_with_a_reason() -> None:
    probes = probe_backends()
    assert [p.name for p in probes] == ["nsjail", "bwrap"]
    for p in probes:
        assert p.detail
        if p.works:
            assert p.hint is None and "/" in p.detail  # version and binary path
        else:
            assert p.hint and "--sandbox none" in p.hint


def test_probe_results_are_cached_per_process() -> None:
    assert probe_backends() == probe_backends()
    assert factory.probe_backend("nsjail") is factory.probe_backend("nsjail")


def test_binaries_are_real_executables_not_the_console_script_shim() -> None:
    for name in ("nsjail", "bwrap"):
        binary = find_binary(name)
        if binary is not None:
            assert Path(binary).read_bytes()[:4] == b"\x7fELF"
            assert not binary.endswith("/.venv/bin/nsjail")


def test_auto_picks_a_working_backend_never_none() -> None:
    if not any(p.works for p in probe_backends()):
        with pytest.raises(SandboxUnavailable) as err:
            select_backend("auto")
        assert err.value.hint and "--sandbox none" in err.value.hint
        return
    backend = select_backend("auto")
    assert backend.name == next(p.name for p in probe_backends() if p.works)


def test_none_only_when_asked_and_unknown_names_refused() -> None:
    assert select_backend("none").name == "none"
    with pytest.raises(UsageError):
        select_backend("docker")


@pytest.mark.parametrize("cls", [NsjailBackend, BwrapBackend])
def test_a_backend_that_cannot_start_says_why(cls: type[NsjailBackend], monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:  # fmt: skip
    """A launcher that fails the way a blocked one does (an error line and a non-zero exit)."""
    fake = tmp_path / "fake-launcher"
    fake.write_text("#!/bin/sh\necho 'setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(factory, "make_backend", lambda name: cls(str(fake)))
    probe = factory._probe_once(cls.name)
    assert not probe.works
    assert "setting up uid map: Permission denied" in probe.detail
    assert probe.hint and "--sandbox none" in probe.hint
    monkeypatch.setattr(factory, "_cache", {})
    with pytest.raises(SandboxUnavailable) as err:
        factory.open_sandbox(cls.name, image=make_image(tmp_path / "x.png"), images_dir=tmp_path / "images")
    assert "setting up uid map: Permission denied" in err.value.message
    assert err.value.hint


def test_missing_image_and_bad_limits_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        factory.open_sandbox("none", image=tmp_path / "nope.png", images_dir=tmp_path)
    with pytest.raises(UsageError):
        factory.open_sandbox("none", image=make_image(tmp_path / "x.png"), images_dir=tmp_path,
                             limits=Limits(memory_mb=100))  # fmt: skip
