"""A self-contained HTML report of one run: open it anywhere, images inline, no network needed."""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from thyme_cli.question.prompts import without_code
from thyme_cli.question.trace import Step, Trace, Turn

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} .meta{color:#666} pre{background:#f6f6f6;padding:.7em;overflow-x:auto;white-space:pre-wrap}
.answer{border:2px solid #2a2;padding:.8em;border-radius:6px;font-size:1.1em;background:#f4fff4;white-space:pre-wrap}
.discarded{opacity:.6} .discarded h3::after{content:" discarded";color:#a22;font-size:.8em}
.noanswer{border:2px solid #a22;padding:.8em;border-radius:6px;background:#fff4f4}
.step{border-left:4px solid #38c;padding-left:1em;margin:1.2em 0} .error{color:#a00}
figure{display:inline-block;margin:.5em 1em .5em 0} img{max-width:100%;max-height:420px;border:1px solid #ccc}
figcaption{font-size:.85em;color:#555}
"""


def _data_uri(path: Path) -> str | None:
    from thyme_cli import step_images

    step_images.wait(path)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(path: Path, caption: str) -> str:
    uri = _data_uri(path)
    if uri is None:
        return f'<p class="error">missing image {html.escape(caption)}</p>'
    return (
        f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _crops_section(trace: Trace, run_dir: Path) -> list[str]:
    """The input image with every crop the code made drawn as a numbered box, and the boxes listed."""
    from thyme_cli.ui.crop_boxes import annotated_png, describe

    png = annotated_png(trace, run_dir)
    if png is None:
        return []
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    items = "".join(f"<li>{html.escape(line.split('. ', 1)[1])}</li>" for line in describe(trace))
    return [
        '<h2>Where the model looked</h2><figure id="crops"><img src="' + uri + '" alt="crop boxes">'
        "<figcaption>every crop of the input image, numbered in order</figcaption></figure>",
        f'<ol class="crops">{items}</ol>',
    ]


# A ```python fence written as code (the generic protocol): shown once, as its step.
_PY_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n[\s\S]*?```", re.IGNORECASE)


def _without_fences(text: str, step: int) -> str:
    return _PY_FENCE_RE.sub(f"[code: step {step} below]", text, count=1)


def _samples_section(trace: Trace) -> list[str]:
    """--samples: every trajectory side by side (answer, vote, log-probability, its turns)."""
    if not trace.samples:
        return []
    esc = html.escape
    votes = ", ".join(f"{esc(k)}: {v}" for k, v in sorted(trace.votes.items(), key=lambda kv: -kv[1]))
    cols = []
    for s in trace.samples:
        lp = s.get("mean_logprob")
        head = (
            f"<h3>Trajectory {s['index']}</h3><p><b>{esc(str(s.get('answer')))}</b></p>"
            f"<p class=meta>vote {esc(str(s.get('vote')))}, mean log-prob "
            f"{'n/a' if lp is None else f'{lp:.3f}'}, {s.get('steps', 0)} step(s), "
            f'<a href="{esc(s["run_dir"])}/trace.json">{esc(s["run_dir"])}</a></p>'
        )
        body = "".join(f"<pre class=turn>{esc(t)}</pre>" for t in s.get("turns", []))
        err = f'<pre class="error">{esc(s["error"])}</pre>' if s.get("error") else ""
        cols.append(f'<div class="sample">{head}{err}{body}</div>')
    return [
        f"<h2>Samples</h2><p class=meta>votes: {votes or 'none'}</p>"
        '<div id="samples" style="display:flex;gap:1em;overflow-x:auto">' + "".join(cols) + "</div>"
    ]


def render_html(trace: Trace, run_dir: Path) -> str:
    """The report as one HTML string."""
    esc = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>thyme: {esc(trace.question[:80])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(trace.question)}</h1>",
        f'<p class="meta">model <b>{esc(trace.model)}</b> ({esc(trace.protocol)} protocol), sandbox '
        f"<b>{esc(trace.sandbox)}</b>, {len(trace.steps)} step(s), {trace.timings.get('total_s', 0):.1f} s, "
        f"{esc(trace.started_at)}</p>",
    ]
    if trace.answer is not None:
        parts.append(f'<div class="answer" id="answer"><b>Answer:</b> {esc(trace.answer)}</div>')
    else:
        parts.append(f'<div class="noanswer" id="answer"><b>No answer:</b> {esc(trace.stop_detail)}</div>')
    parts.extend(_samples_section(trace))
    w, h = trace.image_size
    parts.append("<h2>Input</h2>" + _figure(run_dir / trace.image, f"{trace.image} ({w}x{h})"))
    parts.extend(_crops_section(trace, run_dir))
    parts.append("<h2>Reasoning</h2>")
    for turn in trace.turns:
        step = next((s for s in trace.steps if s.turn == turn.index), None)
        parts.append(_turn_html(turn, step))
        if step is not None:
            parts.extend(_step_html(step, run_dir))
    for note in trace.notes:
        parts.append(f'<p class="meta">note: {esc(note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _turn_html(turn: Turn, step: Step | None) -> str:
    """A turn's prose, its code block replaced by a pointer to the step shown below it."""
    esc = html.escape
    prose = (
        _without_fences(without_code(turn.text, f"[code: step {step.index} below]"), step.index) if step else turn.text
    )
    discarded = (
        "<p class=meta>its step failed and was discarded (--on-error retry); the model was asked again</p>"
        if turn.discarded
        else ""
    )
    return (
        f'<div class="{"discarded" if turn.discarded else "turn"}"><h3>Turn {turn.index} '
        f'<span class="meta">({esc(turn.stop_reason)}, {turn.n_tokens} tokens, '
        f"{turn.seconds:.1f} s)</span></h3>{discarded}<pre class=turn>{esc(prose)}</pre></div>"
    )


def _step_html(step: Step, run_dir: Path) -> list[str]:
    """A step: its code, what it printed, its error and its images."""
    esc = html.escape
    status = "timed out" if step.timed_out else ("error" if step.error else "ok")
    parts = [
        f'<div class="step" id="step-{step.index}"><h4>Step {step.index}: {status} '
        f'<span class="meta">({step.duration_s:.2f} s)</span></h4><pre class=code>{esc(step.code)}</pre>'
    ]
    if step.stdout.strip():
        parts.append(f"<p>Output</p><pre class=stdout>{esc(step.stdout)}</pre>")
    if step.error:
        parts.append(f'<pre class="error">{esc(step.error)}</pre>')
    parts.extend(_figure(run_dir / rel, rel) for rel in step.images)
    parts.append("</div>")
    return parts


def write_html_report(trace: Trace, run_dir: Path) -> Path:
    path = run_dir / "report.html"
    path.write_text(render_html(trace, run_dir), encoding="utf-8")
    return path
