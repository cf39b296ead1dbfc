"""The sandbox as the agent loop uses it, on every backend that starts here (real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.test_sandbox_helpers import (
    ALL_BACKENDS,
    jailed_python_pids,
    make_image,
    require_backend,
    wait_until_gone,
)
from thyme_cli import step_images as store
from thyme_cli.errors import ThymeError
from thyme_cli.sandbox import open_sandbox
from thyme_cli.sandbox.host.limits import Limits
from thyme_cli.sandbox.host.session import RESTART_NOTE, WorkerSandbox

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-basics")


@pytest.fixture(scope="module")
def photo(workdir: Path) -> Path:
    return make_image(workdir / "photo of a cat.jpg", (1280, 960))


@pytest.fixture(scope="module", params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def sb(backend: str, photo: Path, workdir: Path) -> Iterator[WorkerSandbox]:
    """One warm sandbox per backend, shared by the tests that do not need a fresh one."""
    with open_sandbox(backend, image=photo, images_dir=workdir / f"images-{backend}", timeout_s=20) as box:
        yield box


def fresh(backend: str, photo: Path, tmp_path: Path, **kwargs: float) -> WorkerSandbox:
    timeout = float(kwargs.pop("timeout_s", 20))
    return open_sandbox(backend, image=photo, images_dir=tmp_path / "images", timeout_s=timeout, **kwargs)  # type: ignore[arg-type]


def test_reports_backend_and_image_path(sb: WorkerSandbox, backend: str) -> None:
    assert sb.backend == backend
    res = sb.run("print(image_path)\nim = Image.open(image_path)\nprint(im.size)")
    assert res.ok, res.error
    assert res.stdout.splitlines() == [sb.image_path, "(1280, 960)"]
    if backend != "none":
        assert sb.image_path == "/mnt/data/input/photo_of_a_cat.jpg"


def test_preinjected_names(sb: WorkerSandbox) -> None:
    code = (
        "names = [os, math, random, json, re, string, numpy, np, Image, ImageEnhance, ImageFilter,"
        " ImageOps, ImageDraw, cv2, image_path]\n"
        "print(np is numpy, cv2.__name__, Image.__name__, type(image_path).__name__)"
    )
    res = sb.run(code)
    assert res.ok, res.error
    assert res.stdout.strip() == "True cv2 PIL.Image str"


def test_pngs_are_saved_fast_unless_the_code_asks_otherwise(sb: WorkerSandbox) -> None:
    res = sb.run(
        "import io\nimg = Image.radial_gradient('L').resize((512, 512))\nsizes = {}\n"
        "for name, kw in [('default', {}), ('level1', {'compress_level': 1}), ('level9', {'compress_level': 9}),\n"
        "                 ('optimize', {'optimize': True})]:\n"
        "    buf = io.BytesIO(); img.save(buf, 'PNG', **kw); sizes[name] = buf.tell()\n"
        "print(sizes['default'] == sizes['level1'], sizes['level9'] < sizes['default'],"
        " sizes['optimize'] < sizes['default'])"
    )
    assert res.ok, res.error
    assert res.stdout.split() == ["True", "True", "True"]  # level 1 by default; explicit settings are kept


def test_variables_persist_between_steps(sb: WorkerSandbox) -> None:
    assert sb.run("counter = 41\ndef bump(x):\n    return x + 1").ok
    res = sb.run("counter = bump(counter)\nprint(counter)")
    assert res.ok and res.stdout.strip() == "42"
    assert res.step >= 2


def test_separate_sandboxes_do_not_share_state(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path) as a, fresh(backend, photo, tmp_path) as b:
        assert a.run(
            "secret = 'from a'\nopen('/tmp/a.txt' if os.path.isdir('/mnt/data/output') else 'a.txt', 'w').write('x')"
        ).ok
        res = b.run("print('secret' in globals(), os.path.exists('/tmp/a.txt'))")
        assert res.ok, res.error
        assert res.stdout.strip() == "False False"


def test_traceback_points_at_the_models_lines(sb: WorkerSandbox) -> None:
    res = sb.run("a = 1\nb = [1, 2]\nc = b[5]\n")
    assert not res.ok
    assert res.error is not None
    assert 'File "<string>", line 3' in res.error
    assert "c = b[5]" in res.error
    assert res.error.rstrip().endswith("IndexError: list index out of range")
    assert "worker.py" not in res.error and "thyme_cli" not in res.error


def test_traceback_through_a_library_call(sb: WorkerSandbox) -> None:
    res = sb.run("im = Image.new('RGBA', (80, 80))\nim.save('x.jpg')")
    assert res.error is not None
    assert "line 2" in res.error and "OSError" in res.error
    assert "PIL" not in res.error.split("\n")[1]  # the frame shown is the model's, not Pillow's


def test_syntax_error_is_reported(sb: WorkerSandbox) -> None:
    res = sb.run("x = (1,\nprint(x")
    assert res.error is not None and "SyntaxError" in res.error


def test_exit_is_not_an_error_and_keeps_the_worker(sb: WorkerSandbox) -> None:
    assert sb.run("kept = 7\nexit()").ok
    res = sb.run("print(kept)\nimport sys\nsys.exit(3)")
    assert res.stdout.strip() == "7"
    assert res.error == "SystemExit: 3"


def test_indentation_repair_live(sb: WorkerSandbox) -> None:
    res = sb.run("x = 5\n    y = x * 2\n    print(y)")
    assert res.ok, res.error
    assert res.stdout.strip() == "10"


def test_image_from_upstream_output_path_and_processed_path(sb: WorkerSandbox) -> None:
    code = (
        "image_path = '/path/that/does/not/exist.jpg'\n"
        "img = Image.open(image_path)\n"
        "x1, y1, x2, y2 = 600, 400, 610, 405\n"
        "crop = img.crop((x1, y1, x2, y2))\n"
        "processed_path = '/mnt/data/temp_processed_images/zoomed_sign.png'\n"
        "crop.save(processed_path)\n"
        "print(processed_path, crop.size)\n"
    )
    res = sb.run(code)
    assert res.ok, res.error
    assert res.stdout.strip().endswith("(64, 64)")
    assert "temp_processed_images" not in res.stdout
    assert [p.name for p in res.images] == [f"step{res.step}-zoomed_sign.png"]
    host = res.images[0]
    assert host.parent == sb.images_dir
    store.wait(host)  # compressed in the background, off the step's critical path
    with Image.open(host) as im:
        assert im.format == "PNG" and im.size == (64, 64)


def test_numpy_slice_crop_live_and_printed_path(sb: WorkerSandbox) -> None:
    code = (
        "arr = cv2.imread(image_path)\n"
        "roi = arr[950:1000, 1270:1300]\n"
        "out = '/mnt/data/temp_processed_images/roi.jpg'\n"
        "cv.imwrite(out, roi)\n"
        "print('saved', out)\n"
    )
    res = sb.run(code)
    assert res.ok, res.error
    assert len(res.images) == 1
    store.wait(res.images[0])
    with Image.open(res.images[0]) as im:
        assert im.size == (64, 64)  # clamped to the image and widened to 64 x 64


def test_images_found_by_listing_and_not_repeated(sb: WorkerSandbox) -> None:
    code = (
        "for i in range(3):\n    Image.new('RGB', (100 + i, 80)).save(f'/mnt/data/temp_processed_images/part_{i}.png')"
    )
    res = sb.run(code)
    assert res.ok, res.error
    assert sorted(p.name for p in res.images) == [f"step{res.step}-part_{i}.png" for i in range(3)]
    again = sb.run("processed_path = processed_path if 'processed_path' in globals() else None\nprint('nothing new')")
    assert again.ok and again.images == []


def test_old_file_rewritten_in_later_step_counts_as_new(sb: WorkerSandbox) -> None:
    first = sb.run("p = '/mnt/data/temp_processed_images/evolving.png'\nImage.new('L', (70, 70), 0).save(p)")
    assert first.ok and len(first.images) == 1
    second = sb.run("Image.new('L', (90, 90), 255).save(p)\nprint(p)")
    assert second.ok, second.error
    assert [i.name for i in second.images] == [f"step{second.step}-evolving.png"]


def test_matplotlib_show_and_savefig_are_captured(sb: WorkerSandbox) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [3, 1, 2])\n"
        "plt.show()\n"
        "fig = plt.figure()\n"
        "plt.bar(['a', 'b'], [1, 2])\n"
        "plt.savefig('/mnt/data/temp_processed_images/bars.png')\n"
        "print(plt.get_backend())\n"
    )
    res = sb.run(code)
    assert res.ok, res.error
    names = sorted(p.name for p in res.images)
    assert any(n.startswith(f"step{res.step}-figure_") for n in names), names
    assert f"step{res.step}-bars.png" in names


def test_stdout_and_stderr_are_capped_with_a_note(sb: WorkerSandbox) -> None:
    res = sb.run("import sys\nprint('a' * 100000)\nsys.stderr.write('e' * 20000)")
    assert res.ok, res.error
    assert len(res.stdout.encode()) < 16 * 1024 + 100
    assert "[output truncated: 83617 more bytes]" in res.stdout  # 100001 - 16384
    assert "[output truncated: 3616 more bytes]" in res.stderr


def test_c_level_output_is_captured(sb: WorkerSandbox) -> None:
    res = sb.run("os.write(1, b'raw-fd-one\\n')\nos.write(2, b'raw-fd-two\\n')\nprint('py')")
    assert res.ok, res.error
    assert "raw-fd-one" in res.stdout and "py" in res.stdout
    assert "raw-fd-two" in res.stderr


def test_timeout_restarts_a_fresh_worker(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path, timeout_s=3) as box:
        assert box.run("keep = 1").ok
        old = box.worker_marker
        res = box.run("while True:\n    pass")
        assert res.timed_out and not res.ok
        assert res.error == "timed out after 3 s"
        assert res.restarted and RESTART_NOTE in res.stderr
        assert wait_until_gone(old) == []
        after = box.run("print('keep' in globals())")
        assert after.ok and after.stdout.strip() == "False"
        assert box.restarts == 1


def test_worker_death_is_reported_and_recovered(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path) as box:
        res = box.run("os._exit(9)")
        assert res.error is not None and "the sandbox process died" in res.error
        assert box.run("print('back')").stdout.strip() == "back"


def test_close_is_idempotent_and_kills_the_worker(backend: str, photo: Path, tmp_path: Path) -> None:
    box = fresh(backend, photo, tmp_path)
    box.wait_ready()
    marker = box.worker_marker
    assert jailed_python_pids(marker)
    box.close()
    box.close()
    assert wait_until_gone(marker) == []
    with pytest.raises(ThymeError):
        box.run("print(1)")


def test_open_is_cheap_and_worker_starts_in_background(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path) as box:
        start = box.wait_ready()
        assert 0 < start < Limits().start_timeout_s
        assert box.run("print(1)").ok


def test_unjailed_worker_is_what_none_means(photo: Path, tmp_path: Path) -> None:
    """`none` is explicit and really unisolated: the code sees the host's filesystem."""
    with fresh("none", photo, tmp_path) as box:
        res = box.run(f"print(os.path.exists({str(photo)!r}))")
        assert res.stdout.strip() == "True"


def test_worker_that_dies_between_steps_is_replaced(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path) as box:
        res = box.run("import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), os._exit(3))).start()")
        assert res.ok, res.error
        marker = box.worker_marker
        assert wait_until_gone(marker) == []  # the worker killed itself after the step returned
        after = box.run("print('fresh')")
        assert after.ok and after.stdout.startswith("fresh")
        assert after.restarted and RESTART_NOTE in after.stderr
