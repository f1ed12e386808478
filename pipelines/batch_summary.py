"""The lines batch mode adds to the summary and the dry run: batch cost beside online cost, the
batches and where the manifest is, and the rows still pending."""

from __future__ import annotations

from pipelines.describe_options import DescribeImagesOptions
from pipelines.describe_setup import derived
from pipelines.summary import usd
from transforms.core.batch.manifest import Manifest
from transforms.core.question import models, pricing


def _batch_prices(opts: DescribeImagesOptions):
    spec = models.spec_for(opts.model)
    return pricing.batch_prices(spec, derived(opts).prices)


def format_batch_summary(totals: dict[str, float], opts: DescribeImagesOptions) -> str:
    online = totals.get("cost_microdollars", 0) / 1e6
    batch = totals.get("batch_cost_microdollars", 0) / 1e6
    prices = _batch_prices(opts)
    price_note = (
        f"batch prices ${prices[0]:g} / ${prices[1]:g} per 1M input / output tokens"
        if prices
        else "no batch price known for this model: counted at list prices"
    )
    records = Manifest(opts.batch_state).load() if opts.batch_state else []
    ended = sum(1 for r in records if r.ended)
    lines = [
        f"  batch cost  {usd(batch)} through the batch API beside {usd(online)} online "
        f"({price_note})",
        f"  batches     {int(totals.get('batches_submitted', 0))} submitted by this run, "
        f"{int(totals.get('batch_lines_resumed', 0))} requests found already submitted; "
        f"{len(records)} in the manifest ({ended} ended)",
        f"  manifest    {opts.batch_state}",
    ]
    waves, again = int(totals.get("batch_waves", 0)), int(totals.get("batch_resubmissions", 0))
    cap = getattr(opts, "batch_max_enqueued_tokens", None)
    if cap or again or waves > 1:
        lines.append(
            f"  waves       {waves} (batches sent as earlier ones ended; at most "
            f"{int(totals.get('batch_tokens_enqueued_peak', 0)):,} estimated tokens enqueued at "
            f"once, cap {f'{cap:,}' if cap else 'none'}); {again} refused for the provider's "
            "capacity and sent again later"
        )
    for r in records[-10:]:
        c = r.counts or {}
        lines.append(
            f"    {r.batch_id or r.key}  {r.state}  {c.get('completed', 0)}/"
            f"{c.get('total', r.lines)} done, {c.get('failed', 0)} failed"
        )
    if len(records) > 10:
        lines.append(f"    ... and {len(records) - 10} more")
    pending = int(totals.get("batch_rows_pending", 0))
    if pending:
        lines.append(
            f"  PENDING     {pending} rows wait on batches that have not ended (manifest "
            f"{opts.batch_state}); they are neither described nor failed yet: run the same "
            "command again to collect them (nothing is submitted twice)"
        )
    return "\n".join(lines)


def format_batch_dry_run(totals: dict[str, float], opts: DescribeImagesOptions) -> str:
    spec = models.spec_for(opts.model)
    online = pricing.prices(spec, derived(opts).prices)
    prices = _batch_prices(opts)
    tokens = int(totals.get("estimated_image_tokens", 0) + totals.get("estimated_text_tokens", 0))
    bound = int(totals.get("estimated_completion_tokens", 0))
    if prices is None:
        return "  batch cost  unknown: no batch price for this model (list prices assumed)"
    return (
        f"  batch cost  ${pricing.cost(prices, tokens, 0):.4f} for the prompts, up to "
        f"${pricing.cost(prices, tokens, bound):.4f} through the batch API, beside "
        f"${pricing.cost(online, tokens, bound):.4f} online"
    )
