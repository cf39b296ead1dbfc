"""The host's reading of a (hostile) output directory, tested directly on a local directory."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.test_sandbox_helpers import write_png_bomb
from thyme_cli import step_images as store
from thyme_cli.sandbox.host.harvest import (
    HarvestRequest,
    Rejected,
    harvest,
    open_beneath,
    printed_paths,
    read_capped,
    reencode_png,
    relative_parts,
)

ROOT = "/mnt/data/output"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    (d / "step1").mkdir(parents=True)
    return d


@pytest.fixture
def root_fd(out: Path) -> Iterator[int]:
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def request(root_fd: int, images: Path, **kw: object) -> HarvestRequest:
    base: dict[str, object] = {
        "root_fd": root_fd,
        "out_root": ROOT,
        "step": 1,
        "step_dir": "step1",
        "processed_path": None,
        "stdout": "",
        "since_ns": 0,
        "images_dir": images,
        "max_images": 8,
        "max_bytes": 32 << 20,
        "max_pixels": 50_000_000,
    }
    base.update(kw)
    return HarvestRequest(**base)  # type: ignore[arg-type]


def test_printed_paths_only_under_the_output_root() -> None:
    text = f"saved {ROOT}/step1/a.png and /etc/passwd.png, also {ROOT}/step1/b.JPG. done {ROOT}/x.txt"
    assert printed_paths(text, ROOT) == [f"{ROOT}/step1/a.png", f"{ROOT}/step1/b.JPG"]


def test_relative_parts_refuse_escapes() -> None:
    assert relative_parts(f"{ROOT}/step1/a.png", ROOT) == ["step1", "a.png"]
    assert relative_parts(f"{ROOT}/step1/../../../etc/x.png", ROOT) is None
    assert relative_parts("/etc/passwd", ROOT) is None
    assert relative_parts(ROOT, ROOT) is None


def test_symlink_to_a_secret_is_not_followed(out: Path, root_fd: int, tmp_path: Path) -> None:
    secret = tmp_path / "id_rsa"
    secret.write_text("SECRET")
    (out / "step1" / "key.png").symlink_to(secret)
    with pytest.raises(Rejected, match="not a regular file"):
        open_beneath(root_fd, ["step1", "key.png"])


def test_symlinked_directory_is_not_traversed(out: Path, root_fd: int, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "elsewhere" / "x.png")
    (out / "step1" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Rejected):
        open_beneath(root_fd, ["step1", "link", "x.png"])


def test_fifo_does_not_block(out: Path, root_fd: int) -> None:
    os.mkfifo(out / "step1" / "pipe.png")
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            open_beneath(root_fd, ["step1", "pipe.png"])
        except BaseException as exc:
            done.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "opening a FIFO blocked the host"
    assert done and isinstance(done[0], Rejected)


def test_size_cap(out: Path, root_fd: int) -> None:
    (out / "step1" / "big.png").write_bytes(b"\0" * 4096)
    fd = open_beneath(root_fd, ["step1", "big.png"])
    try:
        with pytest.raises(Rejected, match="byte limit"):
            read_capped(fd, 1000)
    finally:
        os.close(fd)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = write_png_bomb(tmp_path / "bomb.png")
    with pytest.raises(Rejected, match="pixel limit"):
        reencode_png(bomb.read_bytes(), tmp_path / "images", "step1-bomb", 50_000_000)
    small = write_png_bomb(tmp_path / "small.png", 3000, 3000)  # under Pillow's guard, over ours
    with pytest.raises(Rejected, match="3000x3000 is larger than the 1000000 pixel limit"):
        reencode_png(small.read_bytes(), tmp_path / "images", "step1-small", 1_000_000)
    assert not (tmp_path / "images").exists() or not any((tmp_path / "images").iterdir())


def test_not_an_image_and_unlisted_formats(tmp_path: Path) -> None:
    with pytest.raises(Rejected, match="not a readable image"):
        reencode_png(b"<html>not an image</html>", tmp_path, "x", 10_000)
    tiff = tmp_path / "x.tiff"
    Image.new("RGB", (10, 10)).save(tiff)
    with pytest.raises(Rejected, match="not a readable image"):
        reencode_png(tiff.read_bytes(), tmp_path, "x", 10_000)


def test_reencoded_as_png_with_step_names(out: Path, root_fd: int, tmp_path: Path) -> None:
    Image.new("P", (30, 20)).save(out / "step1" / "palette image!.gif")
    Image.new("CMYK", (40, 20)).save(out / "step1" / "cmyk.jpg")
    (out / "step1" / "notes.txt").write_text("not an image")
    images = tmp_path / "images"
    got = harvest(request(root_fd, images))
    names = sorted(p.name for p in got.images)
    assert names == ["step1-cmyk.png", "step1-palette_image.png"]
    for p in got.images:
        store.wait(p)  # written in the background
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode in ("RGB", "RGBA")
    again = harvest(request(root_fd, images))  # a second harvest does not overwrite the first
    assert sorted(p.name for p in again.images) == ["step1-cmyk-2.png", "step1-palette_image-2.png"]


def test_processed_path_first_then_printed_then_listing(out: Path, root_fd: int, tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (10, 10)).save(out / "step1" / name)
    got = harvest(
        request(root_fd, tmp_path / "images", processed_path=f"{ROOT}/step1/c.png", stdout=f"{ROOT}/step1/b.png")
    )
    assert [p.name for p in got.images][:2] == ["step1-c.png", "step1-b.png"]
    assert len(got.images) == 3


def test_hardlinks_are_counted_once_and_max_images(out: Path, root_fd: int, tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(out / "step1" / "a.png")
    os.link(out / "step1" / "a.png", out / "step1" / "b.png")
    for i in range(12):
        Image.new("RGB", (10, 10 + i)).save(out / "step1" / f"z{i:02}.png")
    got = harvest(request(root_fd, tmp_path / "images", max_images=5))
    assert len(got.images) == 5
    names = [p.name for p in got.images]
    assert names[0] == "step1-a.png" and "step1-b.png" not in names  # same inode: shown once


def test_files_outside_the_step_dir_need_to_be_new(out: Path, root_fd: int, tmp_path: Path) -> None:
    (out / "step0").mkdir()
    old = out / "step0" / "old.png"
    Image.new("RGB", (10, 10)).save(old)
    st = old.stat()
    req = request(root_fd, tmp_path / "images", processed_path=f"{ROOT}/step0/old.png", since_ns=st.st_mtime_ns + 10**9)
    assert harvest(req).images == []
    req = request(root_fd, tmp_path / "images", processed_path=f"{ROOT}/step0/old.png", since_ns=st.st_mtime_ns)
    assert len(harvest(req).images) == 1


@pytest.mark.parametrize(("mode", "size"), [("L", (31, 7)), ("LA", (5, 9)), ("RGB", (64, 48)), ("RGBA", (3, 3)),
                                            ("RGB", (2000, 1500)), ("P", (40, 30)), ("I;16", (9, 4))])  # fmt: skip
def test_stored_pngs_are_lossless_and_compressed(mode: str, size: tuple[int, int], tmp_path: Path) -> None:
    """The host's copy: Pillow's PNG encoder, written in the background; pixels exact, and until
    it is written the decoded pixels are what the engine gets."""
    import io

    import numpy as np

    from thyme_cli import step_images as store

    rng = np.random.default_rng(1)
    if mode in ("P", "I;16"):
        im = Image.fromarray(rng.integers(0, 200, (size[1], size[0]), dtype=np.uint8)).convert(mode)
    else:
        bands = len(mode)
        pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
        im = Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    dest = reencode_png(buf.getvalue(), tmp_path / "images", "step1-x", 10_000_000)
    held = store.pending_image(dest)
    store.wait(dest)
    assert store.pending_image(dest) is None and store.write_error(dest) is None
    with Image.open(dest) as back:
        back.load()
        assert back.format == "PNG" and back.size == size
        expected = im if mode not in ("P", "I;16") else im.convert("RGB" if mode == "P" else "L")
        assert back.mode == expected.mode and back.tobytes() == expected.tobytes()
        if held is not None:
            assert held.tobytes() == back.tobytes()
    assert not list((tmp_path / "images").glob(".*.part"))
    if mode == "RGB" and size == (2000, 1500):  # random noise does not compress; a gradient does
        flat = Image.linear_gradient("L").resize(size).convert("RGB")
        out = io.BytesIO()
        flat.save(out, "PNG")
        grad = reencode_png(out.getvalue(), tmp_path / "images", "step1-g", 10_000_000)
        store.wait(grad)
        assert grad.stat().st_size < store.raw_size(flat) / 10
