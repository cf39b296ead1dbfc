"""The remote backend's pure parts: backoff, Retry-After, redaction, stop strings, settings."""

from __future__ import annotations

import base64
import random
from email.utils import formatdate
from pathlib import Path

import pytest
from PIL import Image

from thyme_cli.engine.remote.chat import PROSE_STOPS, _Entry, _message, _Segment
from thyme_cli.engine.remote.engine import RemoteConfig
from thyme_cli.engine.remote.http import (
    RemoteUnavailable,
    Retryable,
    RetryPolicy,
    RetryState,
    check_api_key,
    parse_retry_after,
    redact_url,
)
from thyme_cli.engine.remote.images import image_data_uri
from thyme_cli.errors import EngineError, UsageError


def test_backoff_grows_with_full_jitter_and_stays_under_the_cap() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    rng = random.Random(7)
    for attempt in range(1, 10):
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling  # jitter spreads over the whole range
        assert len({round(d, 6) for d in delays}) > 150


def test_retry_after_is_honoured_with_a_little_jitter() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=1.0)
    rng = random.Random(1)
    delays = [policy.delay(1, 7.0, rng) for _ in range(100)]
    assert all(7.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 50


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("99999") == 300.0  # clamped
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = formatdate(1_000_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000_000) == pytest.approx(30.0)


def test_retries_are_bounded_by_attempts_and_by_the_waiting_budget() -> None:
    state = RetryState(RetryPolicy(max_attempts=3, base_s=0.0, cap_s=0.0), random.Random(0), "http://h/v1")
    state.next_delay(Retryable("HTTP 503"))
    state.next_delay(Retryable("HTTP 503"))
    with pytest.raises(EngineError, match=r"kept failing: HTTP 503 \(gave up after 3 attempt") as info:
        state.next_delay(Retryable("HTTP 503"))
    assert not isinstance(info.value, RemoteUnavailable)

    budget = RetryState(RetryPolicy(max_attempts=100, budget_s=5.0), random.Random(0), "http://h/v1")
    with pytest.raises(RemoteUnavailable, match="cannot reach the server at http://h/v1: connection refused"):
        budget.next_delay(Retryable("connection refused", retry_after=6.0, connection=True))


def test_passwords_in_urls_and_bad_keys_are_never_echoed() -> None:
    assert redact_url("http://bob:hunter2@gpu:8000/v1") == "http://***@gpu:8000/v1"
    assert redact_url("http://gpu:8000/v1") == "http://gpu:8000/v1"
    assert check_api_key("  sk-abc  ", "THYME_API_KEY") == "sk-abc"
    with pytest.raises(UsageError) as info:
        check_api_key("sk-line\nbreak", "THYME_API_KEY")
    assert "sk-line" not in info.value.message and "THYME_API_KEY" in info.value.message


@pytest.mark.parametrize(
    ("pieces", "text", "hit"),
    [
        (["think <co", "de>\n```py"], "think <code>", "<code>"),
        (["a</ans", "wer>tail"], "a</answer>", "</answer>"),
        (["x</code><answer>y</answer>"], "x</code>", "</code>"),
        (["no stop", " here"], "no stop here", None),
    ],
)
def test_stop_strings_are_found_across_chunks_and_kept_in_the_text(
    pieces: list[str], text: str, hit: str | None
) -> None:
    seg = _Segment(carry="")
    shown = "".join(seg.add(p, PROSE_STOPS) for p in pieces if seg.hit is None)
    assert (seg.text, seg.hit, shown) == (text, hit, text)


def test_a_stop_split_between_two_requests_is_found_through_the_carry() -> None:
    seg = _Segment(carry="reply so far <co")
    assert seg.add("de>rest", PROSE_STOPS) == "de>" and seg.hit == "<code>"
    old = _Segment(carry="ok</code>")  # a stop wholly in the earlier text is not found again
    assert old.add("more", PROSE_STOPS) == "more" and old.hit is None


def test_messages_join_text_and_keep_images_in_order() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    entry = _Entry(
        "assistant",
        [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, image, {"type": "text", "text": "c"}],
    )
    assert _message(entry) == {
        "role": "assistant",
        "content": [{"type": "text", "text": "ab"}, image, {"type": "text", "text": "c"}],
    }
    assert _message(_Entry("user", [{"type": "text", "text": "x"}])) == {"role": "user", "content": "x"}


def test_data_uris_keep_png_and_jpeg_and_reencode_the_rest(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20), "red").save(tmp_path / "a.png")
    Image.new("RGB", (30, 20), "red").save(tmp_path / "b.jpg")
    Image.new("RGB", (30, 20), "red").save(tmp_path / "c.webp")
    png = image_data_uri(tmp_path / "a.png")
    assert png == "data:image/png;base64," + base64.b64encode((tmp_path / "a.png").read_bytes()).decode()
    assert image_data_uri(tmp_path / "b.jpg").startswith("data:image/jpeg;base64,/9j/")
    assert image_data_uri(tmp_path / "c.webp").startswith("data:image/png;base64,iVBOR")
    Image.new("RGB", (1000, 600), "blue").save(tmp_path / "big.png")
    small = base64.b64decode(image_data_uri(tmp_path / "big.png", max_tokens=64).split(",", 1)[1])
    (tmp_path / "small.png").write_bytes(small)
    with Image.open(tmp_path / "small.png") as img:
        assert img.size[0] % 28 == 0 and img.size[1] % 28 == 0 and img.size[0] * img.size[1] <= 64 * 28 * 28
    with pytest.raises(EngineError, match="cannot read it"):
        image_data_uri(tmp_path / "missing.png")


@pytest.mark.parametrize(
    ("url", "env", "message"),
    [
        (None, {}, "needs the server's URL"),
        ("ftp://host/v1", {}, "must be an http"),
        ("http://:8000/v1", {}, "must be an http"),
        ("http://h/v1", {"THYME_API_TIMEOUT": "soon"}, "THYME_API_TIMEOUT must be a number"),
        ("http://h/v1", {"THYME_API_RETRIES": "0"}, "THYME_API_RETRIES must be a whole number >= 1"),
        ("http://h/v1", {"THYME_API_EXTRA_BODY": "{bad"}, "THYME_API_EXTRA_BODY is not valid JSON"),
        ("http://h/v1", {"THYME_API_EXTRA_BODY": "[1]"}, "must be a JSON object"),
    ],
)
def test_bad_settings_are_one_clear_usage_error(url: str | None, env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RemoteConfig.from_env(url, env)


def test_settings_from_the_environment() -> None:
    config = RemoteConfig.from_env(
        "http://h:8000/v1",
        {
            "OPENAI_API_KEY": "sk-openai",
            "THYME_API_RETRIES": "3",
            "THYME_API_RETRY_BUDGET": "9",
            "THYME_API_TIMEOUT": "30",
            "THYME_API_EXTRA_BODY": '{"repetition_penalty": 1.05}',
        },
    )
    assert config.api_key == "sk-openai" and config.timeout_s == 30.0
    assert (config.policy.max_attempts, config.policy.budget_s) == (3, 9.0)
    assert config.extra_body == {"repetition_penalty": 1.05}
    both = RemoteConfig.from_env("http://h/v1", {"OPENAI_API_KEY": "sk-o", "THYME_API_KEY": "sk-t"})
    assert both.api_key == "sk-t"
