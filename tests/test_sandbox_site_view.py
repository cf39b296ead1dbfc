"""The jail sees only the packages the worker imports, not the rest of any site-packages.

Files planted in the venv's and in the base interpreter's site-packages (a key shipped as test data
by some unrelated package, say) are not readable from a step, on nsjail and bwrap, with a jail per
question and with the batch pool; numpy, Pillow, OpenCV and matplotlib still import and work.
"""

from __future__ import annotations

import json
import shutil
import site
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_sandbox_helpers import JAILS, make_image, require_backend
from thyme_cli.sandbox import open_sandbox
from thyme_cli.sandbox.host.layout import RuntimeLayout, runtime_layout
from thyme_cli.sandbox.host.pool import open_pool

pytestmark = pytest.mark.slow
SECRET = "planted-secret-" + uuid.uuid4().hex


@pytest.fixture(params=JAILS)
def jail(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture
def planted() -> Iterator[list[str]]:
    """A secret file and a fake package with a key, in every writable site-packages dir in use."""
    dirs = {site.getsitepackages()[0], sysconfig.get_paths()["purelib"],
            str(Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
                / "site-packages")}  # fmt: skip
    made: list[Path] = []
    paths: list[str] = []
    for d in sorted(dirs):
        base = Path(d)
        if not base.is_dir():
            continue
        name = f"thyme_planted_{uuid.uuid4().hex[:8]}"
        try:
            (base / f"{name}.txt").write_text(SECRET)
            (base / name / "keys").mkdir(parents=True)
            (base / name / "keys" / "id_rsa").write_text(SECRET)
        except OSError:
            continue  # not ours to write (a system interpreter): nothing planted there
        made += [base / f"{name}.txt", base / name]
        paths += [RuntimeLayout.jail_path(str(base / f"{name}.txt")),
                  RuntimeLayout.jail_path(str(base / name / "keys" / "id_rsa"))]  # fmt: skip
    assert paths, "no site-packages dir to plant in"
    yield paths
    for p in made:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


PROBE = """
import importlib, sys
found = {{}}
for p in {paths!r}:
    try:
        found[p] = open(p).read()[:40]
    except OSError as e:
        found[p] = type(e).__name__
listed = {{}}
for d in {site_dirs!r}:
    try:
        listed[d] = sorted(os.listdir(d))
    except OSError as e:
        listed[d] = [type(e).__name__]
try:
    open({first_site!r} + '/evil.py', 'w').write('x')
    wrote = True
except OSError:
    wrote = False
import matplotlib.pyplot as plt
plt.plot([0, 1], [1, 0])
plt.savefig('/mnt/data/temp_processed_images/plot.png')
mods = [importlib.import_module(m).__name__ for m in ('numpy', 'PIL.Image', 'cv2', 'matplotlib')]
print(json.dumps({{"found": found, "listed": listed, "wrote": wrote, "mods": mods}}))
"""


def _check(run_step: object, paths: list[str]) -> None:
    lay = runtime_layout()
    site_dirs = [RuntimeLayout.jail_path(d) for d, _ in lay.site_dirs]
    code = PROBE.format(paths=paths, site_dirs=site_dirs, first_site=site_dirs[0])
    res = run_step(code)  # type: ignore[operator]
    assert res.ok, (res.error, res.stderr)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(v in ("FileNotFoundError", "NotADirectoryError") for v in out["found"].values()), out["found"]
    assert SECRET not in res.stdout
    for names in out["listed"].values():
        assert not any(n.startswith("thyme_planted_") for n in names), names
    assert out["wrote"] is False
    assert out["mods"] == ["numpy", "PIL.Image", "cv2", "matplotlib"]
    assert len(res.images) == 1  # matplotlib drew its figure


def test_planted_files_in_site_packages_are_invisible(jail: str, planted: list[str], tmp_path: Path) -> None:
    photo = make_image(tmp_path / "photo.png")
    with open_sandbox(jail, image=photo, images_dir=tmp_path / "images", timeout_s=60) as box:
        _check(box.run, planted)


def test_planted_files_are_invisible_to_pooled_questions(jail: str, planted: list[str], tmp_path: Path) -> None:
    photo = make_image(tmp_path / "photo.png")
    with open_pool(jail, timeout_s=60) as pool, pool.open(image=photo, images_dir=tmp_path / "images") as box:
        assert pool.pooled
        _check(box.run, planted)


def test_only_the_workers_distributions_are_in_the_view() -> None:
    lay = runtime_layout()
    shown = {name for _, names in lay.site_dirs for name in names}
    for needed in ("numpy", "PIL", "cv2", "matplotlib"):
        assert needed in shown
    for unrelated in ("typer", "rich", "pytest", "hypothesis", "llama_cpp", "thyme_cli", "pip"):
        assert unrelated not in shown, unrelated
