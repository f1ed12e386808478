"""The review page of a run: one self-contained HTML file, safe to open. No Beam import.

One module (about 400 lines) because it is the HTML of one page, every piece escaped by the same
``esc`` / ``cell``; what the answers cost is ``review.costs``.

``render(run, thumbs, question)`` turns a ``review.data.RunData`` into the page: a header with
the run's totals and its question, a card per sampled description (thumbnail, answer, structured
columns, model, tokens, cost, ``billed``, latency, id and reference) and the failures grouped by
stage and error type. ``Thumbnails`` makes the pictures.

Safety, since descriptions are model output and references user input:

- every value passes ``sanitize.text`` (valid UTF-8, the key redacted, length capped) and then
  ``html.escape(..., quote=True)``, in text and in attributes alike; the page has no script and
  no event handler at all;
- a Content-Security-Policy (``default-src 'none'; img-src data:; style-src 'unsafe-inline'``)
  sits first in ``<head>``, so even a missed escape could neither run script nor load anything;
- nothing on the page points off the machine: thumbnails are inline ``data:`` URLs, the CSS is
  inline, there are no fonts, links or remote images. An http(s) reference is shown as text.

Thumbnails are made by the job's own ``ImageLoader`` (same readers, SSRF guard, decoder
allowlist, pixel limit and decode budget), asked for JPEG or PNG at most 256 px on a side. An
http(s) image is fetched only when the run itself fetched it (``--inline_http_images``); a
missing, unreadable or unfetched image gets a placeholder saying why, never an error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import html
import time
from collections.abc import Iterable, Mapping
from typing import Any

from transforms.core.guards import sanitize
from transforms.core.images import loader as images
from transforms.core.images import sources as image_sources
from transforms.core.review import costs
from transforms.core.review.data import MAX_DISTINCT, FailureGroup, RunData

THUMB_SIDE = 256
MAX_DESCRIPTION = 4_000  # characters of an answer shown on a card
MAX_VALUE = 500  # characters of any other value
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)


@dataclasses.dataclass(frozen=True)
class Question:
    """What the run asked, for the header: not in the rows (they hold its hash, request_key)."""

    prompt: str | None = None
    system_prompt: str | None = None
    output_schema: str | None = None
    prices: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    mode: str = "online"  # or "batch": the provider's batch API, billed at its batch prices
    # --price_table's cached rates: {model: (cached_input, cache_write)} USD per 1M, either None
    cache_prices: Mapping[str, tuple] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Thumb:
    url: str | None  # a data:image/... URL, or None for a placeholder
    note: str = ""  # why there is no picture


def thumbnail_options(
    inline_http: bool = False,
    allowed_networks: tuple[str, ...] = (),
    http_timeout: float = 30.0,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    decode_megapixels: float = 100.0,
) -> images.ImageOptions:
    """The job's image options, reshaped for thumbnails: JPEG/PNG, at most 256 px a side."""
    return images.ImageOptions(
        max_side=THUMB_SIDE,
        max_pixels=max_pixels,
        max_send_bytes=512 * 1024,
        inline_http=inline_http,
        http_timeout=http_timeout,
        allowed_networks=allowed_networks,
        jpeg_quality=80,
        send_formats=("JPEG", "PNG"),
        decode_megapixels=decode_megapixels,
    )


class Thumbnails:
    """Thumbnails for references, made on a few threads within a time budget for the page.

    Each reference is read once however many cards show it. A reference still loading when
    ``budget_s`` runs out gets a placeholder (its read is bounded by the loader's own timeout).
    """

    def __init__(self, options: images.ImageOptions, workers: int = 8, budget_s: float = 120.0):
        self.options = options
        self.workers = workers
        self.budget_s = budget_s
        self._loader = images.ImageLoader(options)

    def close(self) -> None:
        self._loader.close()

    def make(self, references: Iterable[Any]) -> dict[Any, Thumb]:
        refs = list(dict.fromkeys(r for r in references if isinstance(r, str)))
        out: dict[Any, Thumb] = {}
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, "thumbnail")
        try:
            futures = {pool.submit(self.one, ref): ref for ref in refs}
            done, _ = concurrent.futures.wait(futures, timeout=self.budget_s)
            for future, ref in futures.items():
                if future in done:
                    out[ref] = future.result()
                else:
                    out[ref] = Thumb(None, f"not loaded within the page's {self.budget_s:g} s")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return out

    def one(self, reference: Any) -> Thumb:
        try:
            scheme = image_sources.scheme_of(image_sources.clean_reference(reference))
            if scheme in ("http", "https") and not self.options.inline_http:
                return Thumb(None, "not fetched: the run sent http(s) images by URL")
            prepared = self._loader.prepare(reference)
        except image_sources.ImageError as exc:
            return Thumb(None, f"{exc.error_type}: {exc.message}")
        except Exception as exc:  # a placeholder, never an error: the page is for looking
            return Thumb(None, f"unreadable ({type(exc).__name__})")
        if not prepared.url.startswith(("data:image/jpeg;", "data:image/png;")):
            return Thumb(None, "no inline picture")
        return Thumb(prepared.url)


# -- rendering -----------------------------------------------------------------------------------
def esc(value: Any, limit: int | None = MAX_VALUE) -> str:
    """A value as safe HTML text, also inside a quoted attribute (it never makes markup)."""
    if value is None:
        value = "null"
    elif isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, float):
        value = f"{value:g}"
    elif isinstance(value, list | tuple):
        value = ", ".join("null" if v is None else str(v) for v in value)
    return html.escape(sanitize.text(str(value), limit) or "", quote=True)


def cell(value: Any, limit: int | None = MAX_VALUE) -> str:
    """A value for a table cell: null shown as a muted 'null'."""
    return "<span class='null'>null</span>" if value is None else esc(value, limit)


def reference_text(reference: Any) -> str:
    """How a reference is shown: a data: URL by its header and length only."""
    if isinstance(reference, str) and reference[:5].lower() == "data:":
        head = reference.split(",", 1)[0][:60]
        return f"{head},… ({len(reference):,} characters)"
    return reference


def _usd(value: float) -> str:
    return f"${value:,.4f}"


def row_cost(row: Mapping[str, Any], question: Question) -> float:
    """USD billed for one row's answer (0 for a row that reused another's)."""
    return costs.row_cost(row, question.prices, question.mode, question.cache_prices)


def render(
    run: RunData,
    thumbs: Mapping[Any, Thumb],
    question: Question,
    sample: int,
    seed: int,
    generated: str | None = None,
) -> str:
    generated = generated or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    cards = "\n".join(
        _card(i, row, thumbs.get(row.get("image_uri")), run.extra_columns, question)
        for i, row in enumerate(run.cards)
    )
    if not run.cards:
        cards = "<p class='empty'>No descriptions in this run.</p>"
    return PAGE.format(
        csp=html.escape(CSP, quote=True),
        title=esc(f"vision-enrich review: {run.source}"),
        header=_header(run, question, sample, seed, generated),
        card_count=len(run.cards),
        described=f"{run.totals.described:,}",
        cards=cards,
        failures=_failures(run.failures, run.totals.failed),
        style=STYLE,
    )


def _header(run: RunData, question: Question, sample: int, seed: int, generated: str) -> str:
    t = run.totals
    cost = costs.run_cost(t, question.prices, question.mode, question.cache_prices)
    price_lines = [esc(line) for line in costs.price_lines(t, question.prices, question.mode)]
    reported = ", ".join(
        f"{esc(m)} ({n:,} rows)" for m, n in sorted(t.reported_models.items(), key=lambda i: -i[1])
    )
    more = "+" if len(t.reported_models) >= MAX_DISTINCT else ""
    keys = f"{t.request_keys:,}" + ("+" if t.request_keys > MAX_DISTINCT else "")
    tiles = [
        ("described", f"{t.described:,}"),
        ("failed", f"{t.failed:,}"),
        ("requests", f"{t.requests:,}"),
        ("tokens", f"{t.prompt_tokens:,} + {t.completion_tokens:,}"),
        ("cost", _usd(cost)),
    ]
    tile_html = "".join(
        f"<div class='tile' data-total='{esc(k)}'><span class='value'>{v}</span>"
        f"<span class='label'>{esc(k)}</span></div>"
        for k, v in tiles
    )
    not_recorded = "<span class='null'>(not recorded: pass it to pipelines.review)</span>"

    def asked(value: str | None, limit: int = 2_000) -> str:
        return f"<pre>{esc(value, limit)}</pre>" if value else not_recorded

    shown = min(sample, t.described)
    system = asked(question.system_prompt) if question.system_prompt else "none"
    schema = asked(question.output_schema, 4_000) if question.output_schema else "none (free text)"
    return f"""
<header>
  <h1>vision-enrich review</h1>
  <p class="source">{esc(run.source)} &middot; page made {esc(generated)}</p>
  <div class="tiles">{tile_html}</div>
  <dl class="question">
    <dt>models asked for</dt><dd>{esc(", ".join(sorted(t.by_model)) or "-")}</dd>
    <dt>models that answered</dt><dd>{reported or "-"}{more}</dd>
    <dt>prompt</dt><dd>{asked(question.prompt)}</dd>
    <dt>system prompt</dt><dd>{system}</dd>
    <dt>output schema</dt><dd>{schema}</dd>
    <dt>distinct questions</dt><dd>{keys} request_key value(s)</dd>
    <dt>tokens</dt><dd>{t.prompt_tokens:,} prompt + {t.completion_tokens:,} completion on
      {t.billed_rows:,} billed rows (billed = false: reused an identical image's answer)</dd>
    <dt>cost</dt><dd>{_usd(cost)} {esc(question.mode)}, at {"; ".join(price_lines) or "-"}</dd>
    <dt>requests</dt><dd>{t.requests:,} HTTP attempts recorded on billed rows and failures</dd>
  </dl>
  <nav><a href="#descriptions">{shown:,} sampled descriptions</a> &middot;
    <a href="#failures">{len(run.failures):,} failure groups ({t.failed:,} rows)</a></nav>
  <p class="sample">{shown:,} of {t.described:,} descriptions drawn at random (seed {seed}).</p>
</header>"""


def _card(
    index: int, row: Mapping[str, Any], thumb: Thumb | None, extra: list[str], question: Question
) -> str:
    thumb = thumb or Thumb(None, "no reference")
    image_id = row.get("image_id")
    if thumb.url:
        picture = (
            f"<img class='thumb' src='{html.escape(thumb.url, quote=True)}' "
            f"alt='{esc(image_id, 200)}'>"
        )
    else:
        picture = (
            f"<div class='thumb placeholder'><span>no picture</span>"
            f"<small>{esc(thumb.note, 300)}</small></div>"
        )
    fields = "".join(
        f"<tr><th>{esc(name)}</th><td>{cell(row.get(name))}</td></tr>"
        for name in extra
        if name in row
    )
    fields = f"<table class='fields'>{fields}</table>" if fields else ""
    size = ""
    if row.get("image_width") and row.get("image_height"):
        size = f"{row['image_width']}x{row['image_height']} "
    model = esc(row.get("model"))
    if row.get("requested_model") and row.get("requested_model") != row.get("model"):
        model += f" <span class='muted'>(asked {esc(row.get('requested_model'))})</span>"
    latency = row.get("latency_ms")
    meta = [
        ("model", model),
        (
            "tokens",
            f"{esc(row.get('prompt_tokens'))} + {esc(row.get('completion_tokens'))} = "
            f"{esc(row.get('total_tokens'))}",
        ),
        ("cost", _usd(row_cost(row, question))),
        ("billed", cell(row.get("billed"))),
        ("latency", f"{latency:,.0f} ms" if isinstance(latency, int | float) else esc(latency)),
        ("attempts", cell(row.get("attempts"))),
        ("finish", cell(row.get("finish_reason"))),
        ("image", f"{esc(size)}{cell(row.get('image_mime'))}"),
    ]
    meta_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)
    return f"""<article class="card" id="card-{index}">
  {picture}
  <div class="body">
    <h3 class="image-id">{esc(image_id, 300)}</h3>
    <p class="ref"><code>{esc(reference_text(row.get("image_uri")), 1_000)}</code></p>
    <p class="description">{esc(row.get("description"), MAX_DESCRIPTION)}</p>
    {fields}
    <dl class="meta">{meta_html}</dl>
  </div>
</article>"""


def _failures(groups: list[FailureGroup], failed: int) -> str:
    if not groups:
        return "<p class='empty'>No failures.</p>"
    rows = []
    for g in groups:
        ids = ", ".join(esc(i, 200) for i in g.ids)
        if g.count > len(g.ids):
            ids += f" <span class='muted'>… {g.count:,} in all</span>"
        rows.append(
            f"<tr class='failure-group'><td><span class='stage'>{esc(g.stage)}</span></td>"
            f"<td><code>{esc(g.error_type) if g.error_type else '(none)'}</code></td>"
            f"<td class='num'>{g.count:,}</td><td class='message'>{esc(g.example, 2_000)}</td>"
            f"<td class='ids'>{ids}</td></tr>"
        )
    return (
        "<table class='failures'><thead><tr><th>stage</th><th>error type</th><th>rows</th>"
        "<th>example message (what went wrong, what to do)</th><th>affected ids</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<p class='hint'>{failed:,} failed rows. Fix the inputs the messages name, then rerun "
        "just the failures: <code>--input &lt;output&gt;/failures-*.parquet --image_column "
        "image_uri</code>.</p>"
    )


STYLE = """
:root { --fg: #1d2330; --muted: #687083; --line: #dfe3ea; --bg: #f5f6f8; --accent: #2f5bd3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 20px 28px; }
h1 { margin: 0 0 2px; font-size: 22px; }
h2 { font-size: 17px; margin: 26px 28px 12px; }
.source, .sample, .muted, .null { color: var(--muted); }
.null { font-style: italic; }
.tiles { display: flex; gap: 12px; margin: 14px 0; flex-wrap: wrap; }
.tile { background: var(--bg); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px 14px; min-width: 120px; }
.tile .value { display: block; font-size: 20px; font-weight: 600; }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; }
dl.question { display: grid; grid-template-columns: 160px 1fr; gap: 4px 12px; margin: 8px 0; }
dl.question dt { color: var(--muted); }
dl.question dd { margin: 0; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font: 13px/1.4 ui-monospace,
  Menlo, Consolas, monospace; background: var(--bg); padding: 4px 6px; border-radius: 4px; }
nav a { color: var(--accent); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr));
  gap: 16px; padding: 0 28px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; overflow: hidden;
  display: flex; flex-direction: column; }
.thumb { display: block; width: 100%; height: 200px; object-fit: contain; background: #e9ecf1; }
.placeholder { display: flex; flex-direction: column; align-items: center; justify-content: center;
  color: var(--muted); padding: 12px; text-align: center; word-break: break-word; }
.placeholder span { font-weight: 600; }
.body { padding: 10px 14px 14px; }
.image-id { margin: 0; font-size: 15px; word-break: break-all; }
.ref { margin: 2px 0 8px; color: var(--muted); word-break: break-all; font-size: 12px; }
.description { margin: 0 0 10px; white-space: pre-wrap; word-break: break-word; }
table.fields { border-collapse: collapse; margin: 0 0 10px; width: 100%; font-size: 13px; }
table.fields th, table.fields td { border-top: 1px solid var(--line); padding: 3px 6px;
  text-align: left; vertical-align: top; word-break: break-word; }
table.fields th { color: var(--muted); font-weight: 500; width: 35%; }
dl.meta { display: grid; grid-template-columns: 70px 1fr; gap: 1px 8px; margin: 0;
  font-size: 12px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; word-break: break-word; }
section#failures { padding-bottom: 28px; }
table.failures { border-collapse: collapse; margin: 0 28px; background: #fff;
  border: 1px solid var(--line); width: calc(100% - 56px); }
table.failures th, table.failures td { padding: 8px 10px; border-bottom: 1px solid var(--line);
  text-align: left; vertical-align: top; word-break: break-word; }
table.failures th { background: #fafbfc; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.stage { background: #fde8e8; color: #9b1c1c; border-radius: 10px; padding: 1px 8px;
  font-size: 12px; }
.hint, .empty { margin: 10px 28px; color: var(--muted); }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{header}
<main>
<section id="descriptions">
<h2>Descriptions: {card_count:,} sampled of {described}</h2>
<div class="grid">
{cards}
</div>
</section>
<section id="failures">
<h2>Failures by stage and error type</h2>
{failures}
</section>
</main>
</body>
</html>
"""
