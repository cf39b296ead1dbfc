"""Image sizing: Hugging Face's smart_resize rule, and loading images for the projector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from thyme_cli.engine.images import ImageSizing, load_image, smart_resize
from thyme_cli.errors import EngineError

RL_MAX_PIXELS = 2_408_448  # Thyme-RL's max_pixels = 3072 tokens * 28 * 28


# Expected values worked out by hand from the HF formula (transformers' Qwen2-VL smart_resize):
# round each side to a multiple of 28; if the area is above max_pixels scale down by
# sqrt(area / max) and floor; if below min_pixels scale up by sqrt(min / area) and ceil.
@pytest.mark.parametrize(
    ("size", "kwargs", "expected"),
    [
        ((200, 300), {}, (196, 308)),  # plain rounding: 7.14 -> 7, 10.71 -> 11
        ((420, 280), {}, (420, 280)),  # already multiples of 28: unchanged
        ((42, 70), {}, (56, 56)),  # 1.5 -> 2 and 2.5 -> 2: Python's round-half-to-even, as in HF
        ((28, 28), {}, (56, 56)),  # below min_pixels (4 tokens): scaled up
        ((10, 20), {}, (56, 84)),  # tiny image: rounds to 0, then scaled up to the minimum
        ((1, 1), {}, (56, 56)),
        ((20, 3000), {}, (28, 2996)),  # 150:1
        ((10, 1990), {}, (28, 812)),  # 199:1, below the minimum area
        ((1080, 1920), {}, (728, 1316)),  # above the function's default max_pixels (1280 tokens)
        ((1080, 1920), {"max_pixels": RL_MAX_PIXELS}, (1092, 1932)),  # fits Thyme-RL's limit
        ((2000, 3000), {"max_pixels": RL_MAX_PIXELS}, (1260, 1876)),  # scaled down: 45 x 67 tokens
        ((4000, 3000), {"max_pixels": 64 * 784}, (252, 168)),  # a 64-token budget: 9 x 6 tokens
        ((200, 300), {"factor": 32, "min_pixels": 4 * 1024, "max_pixels": 16384 * 1024}, (192, 288)),  # Qwen3-VL
    ],
)
def test_smart_resize_matches_the_hugging_face_rule(
    size: tuple[int, int], kwargs: dict[str, int], expected: tuple[int, int]
) -> None:
    assert smart_resize(*size, **kwargs) == expected


def test_smart_resize_refuses_extreme_aspect_ratios_like_hf() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 201)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(5000, 20)


@given(
    h=st.integers(min_value=1, max_value=6000),
    w=st.integers(min_value=1, max_value=6000),
    max_tokens=st.integers(min_value=4, max_value=4096),
)
def test_smart_resize_invariants(h: int, w: int, max_tokens: int) -> None:
    if max(h, w) / min(h, w) > 200:
        return
    min_pixels, max_pixels = 4 * 784, max_tokens * 784
    rh, rw = smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
    assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
    # Within budget, except where HF clamps a very thin side up to one patch row (or scales a
    # smaller-than-minimum image up).
    if h * w >= min_pixels:
        assert rh * rw <= max_pixels or min(rh, rw) == 28
    # A not-tiny image well within budget only moves by the rounding to 28 px.
    if min(h, w) >= 56 and h * w <= max_pixels // 2:
        assert rh >= h - 14 and rw >= w - 14


def test_sizing_budget_derives_pixels_from_tokens() -> None:
    sizing = ImageSizing(factor=28, min_tokens=4, max_tokens=3072)
    assert sizing.max_pixels == RL_MAX_PIXELS
    assert sizing.min_pixels == 56 * 56
    assert sizing.target_size(3000, 2000) == (1876, 1260)  # (width, height)
    assert sizing.grid(3000, 2000) == (67, 45)
    assert ImageSizing().target_size(123, 45) == (123, 45)  # no resizing without a factor
    assert ImageSizing().grid(123, 45) is None


def _png(path: Path, w: int, h: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def test_an_image_that_needs_no_resize_passes_through_untouched(tmp_path: Path) -> None:
    pixels = _png(tmp_path / "a.png", 420, 280)
    prepared = load_image(tmp_path / "a.png", ImageSizing(factor=28, max_tokens=3072))
    assert (prepared.width, prepared.height) == (420, 280)
    assert not prepared.resized
    assert prepared.rgb == pixels.tobytes()


def test_an_odd_sized_image_is_resized_to_the_smart_resize_grid(tmp_path: Path) -> None:
    _png(tmp_path / "b.png", 300, 200)
    prepared = load_image(tmp_path / "b.png", ImageSizing(factor=28, max_tokens=3072))
    assert (prepared.width, prepared.height) == (308, 196)
    assert prepared.original_size == (300, 200)
    assert len(prepared.rgb) == 308 * 196 * 3


def test_without_a_factor_images_keep_their_size(tmp_path: Path) -> None:
    pixels = _png(tmp_path / "c.png", 301, 17)
    prepared = load_image(tmp_path / "c.png", ImageSizing())
    assert (prepared.width, prepared.height) == (301, 17)
    assert prepared.rgb == pixels.tobytes()


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    prepared = load_image(tmp_path / "t.png", ImageSizing())
    assert set(prepared.rgb) == {255}


def test_unreadable_and_missing_images_raise_engine_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(EngineError, match="cannot read image"):
        load_image(tmp_path / "bad.png", ImageSizing())
    with pytest.raises(EngineError, match="image not found"):
        load_image(tmp_path / "missing.png", ImageSizing())


def test_extreme_aspect_ratio_is_an_engine_error_naming_the_file(tmp_path: Path) -> None:
    _png(tmp_path / "strip.png", 1000, 3)
    with pytest.raises(EngineError, match=r"strip\.png is 1000x3") as info:
        load_image(tmp_path / "strip.png", ImageSizing(factor=28))
    assert info.value.hint
