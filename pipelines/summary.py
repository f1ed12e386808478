"""The lines a run prints at its end: the summary of a run and the estimate of a dry run, from the
job's counters."""

from __future__ import annotations

from apache_beam.metrics.metric import MetricsFilter

from pipelines.describe_options import DescribeImagesOptions
from pipelines.describe_setup import derived
from transforms.core.describe_config import NAMESPACE, RESERVED_COLUMNS, sent_instructions
from transforms.core.images import sizes as image_sizes
from transforms.core.question import caching, models, pricing
from transforms.core.question import output_schema as structured


def summarize(result, elapsed: float) -> dict[str, float]:
    """Totals of the job's counters, read back from the pipeline result."""
    totals: dict[str, float] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + (value or 0)
    totals["elapsed_s"] = elapsed
    return totals


def _outputs(opts: DescribeImagesOptions) -> list[str]:
    places = []
    if opts.output:
        places.append(f"{opts.output}/descriptions-*.parquet, {opts.output}/failures-*.parquet")
    if opts.output_table:
        places.append(f"BigQuery {opts.output_table}, {opts.failures_table}")
    return places


def format_summary(totals: dict[str, float], opts: DescribeImagesOptions) -> str:
    described = int(totals.get("images_described", 0))
    failed = int(totals.get("images_failed", 0))
    elapsed = totals["elapsed_s"]
    # merged before sending (GroupByContent), or caught by a worker process's ledger
    same_bytes = int(
        totals.get("rows_sharing_identical_bytes", 0) + totals.get("rows_reusing_an_answer", 0)
    )
    lines = [
        "vision-enrich summary",
        f"  described   {described}",
        f"  failed      {failed}",
        f"  requests    {int(totals.get('requests', 0))} "
        f"({int(totals.get('retries', 0))} retries, {int(totals.get('http_429', 0))} "
        "answered 429)",
        f"  sent        {int(totals.get('images_sent', 0))} images for {described + failed} "
        f"rows ({int(totals.get('rows_sharing_a_request', 0))} rows shared a request with the "
        f"same reference, {same_bytes} with identical bytes under another reference)",
        f"  tokens      {int(totals.get('prompt_tokens', 0))} prompt (estimated "
        f"{int(totals.get('estimated_prompt_tokens', 0))}) + "
        f"{int(totals.get('completion_tokens', 0))} completion, from the usage blocks",
        f"  cost        {usd(job_cost(totals))} at {_price_source(opts)} "
        f"(estimated {usd(totals.get('estimated_cost_microdollars', 0) / 1e6)} before sending, "
        "completion at --max_tokens)" + _preflight(totals) + _unread(totals),
        f"  elapsed     {elapsed:.1f} s",
        f"  throttled   {int(totals.get('cumulativeThrottlingSeconds', 0))} s waiting on the "
        "rate budget or the provider's 429s",
        backpressure_line(totals),
        f"  throughput  {(described + failed) / max(elapsed, 1e-9):.2f} images/s",
        *[f"  output      {where}" for where in _outputs(opts)],
    ]
    skipped = int(totals.get("rows_skipped_existing", 0))
    if opts.skip_existing:
        lines.append(f"  skipped     {skipped} rows already described in {opts.skip_existing}")
    over = int(totals.get("rows_over_budget", 0))
    if over:
        lines.append(
            f"  BUDGET      {over} rows were not sent: budget reached (--max_images / "
            "--max_cost); they are in the failures output, rerun with --skip_existing to go on"
        )
    not_sent = int(totals.get("rows_not_sent", 0))
    if not_sent:
        lines.append(
            f"  STOPPED     {not_sent} rows were not sent: the API refused the account "
            "(401/402/403, or a gateway's refusal of the key); see failures-*.parquet for the "
            "reason, fix it, rerun the failures"
        )
    if every_row_failed(totals):
        lines.append(
            f"  ALL FAILED  none of the {failed} rows was described: the job exits with status 1; "
            "the failures output says why"
        )
    return "\n".join(lines)


def usd(amount: float) -> str:
    """Dollars with digits enough to judge a small run: cents from $100, four places from $1,
    six under it ($0.005512, not $0.0055)."""
    if amount >= 100:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if amount >= 1 else f"${amount:.6f}"


def job_cost(totals: dict[str, float]) -> float:
    """USD the run was billed for, from the usage blocks: every row's answers and the
    preflight's one request (answers paid but unreadable are added apart, at the estimate)."""
    return (totals.get("cost_microdollars", 0) + totals.get("preflight_cost_microdollars", 0)) / 1e6


def preflight_totals(result, opts: DescribeImagesOptions) -> dict[str, float]:
    """The preflight's one billed request (``preflight.check_model_answers``' answer) as the
    summary's counters, priced like every row's answer."""
    completion = getattr(result, "completion", None)
    if completion is None:
        return {}
    prompt, done = completion.prompt_tokens or 0, completion.completion_tokens or 0
    tier = getattr(completion, "service_tier", None)
    prices = pricing.tier_prices(models.spec_for(opts.model), derived(opts).prices, tier)
    return {
        "preflight_prompt_tokens": prompt,
        "preflight_completion_tokens": done,
        "preflight_cost_microdollars": pricing.cost(prices, prompt, done) * 1e6,
    }


def _preflight(totals: dict[str, float]) -> str:
    if "preflight_cost_microdollars" not in totals:
        return ""
    return (
        f"; {usd(totals['preflight_cost_microdollars'] / 1e6)} of it the preflight's test request "
        f"({int(totals.get('preflight_prompt_tokens', 0))} + "
        f"{int(totals.get('preflight_completion_tokens', 0))} tokens)"
    )


def _unread(totals: dict[str, float]) -> str:
    """Answers with HTTP 200 that could not be read: billed, but with no usage block to count."""
    n = int(totals.get("paid_unreadable_answers", 0))
    if not n:
        return ""
    return (
        f" + ~{usd(totals.get('unread_cost_microdollars', 0) / 1e6)} for {n} answers paid but "
        "unreadable (HTTP 200 with a body that could not be read, decoded or parsed; priced at "
        "the estimate)"
    )


def backpressure_line(totals: dict[str, float]) -> str:
    """The rate the back-pressure controller held and why, from its counters
    (``backpressure.Controller.take_counts``; the time and answers add up over processes)."""
    limits = int(totals.get("backpressure_limit_verdicts", 0))
    noise = int(totals.get("backpressure_noise_verdicts", 0))
    resets = int(totals.get("backpressure_window_resets", 0))
    paced_s = totals.get("backpressure_paced_ms", 0) / 1000
    ok = int(totals.get("backpressure_paced_ok", 0))
    refused = int(totals.get("backpressure_paced_429", 0))
    pace = totals.get("backpressure_pace_mrps", 0) / 1000
    header_s = totals.get("backpressure_header_paced_ms", 0) / 1000
    parts = []
    if limits:
        parts.append(
            f"a rate limit, held at {ok / max(paced_s, 1e-9):.2f} requests/s accepted over "
            f"{paced_s:.0f} s paced ({refused} of {ok + refused} answers 429), last pace "
            f"{pace:.2f}/s: the 429s fell when the pace was cut ({limits} verdict"
            f"{'s' if limits > 1 else ''})"
            + (f", {resets} fixed-window resets waited for" if resets else "")
        )
    if header_s:
        parts.append(
            f"paced by the provider's rate-limit headers for {header_s:.0f} s"
            + ("" if limits else f", last at {pace:.2f}/s")
        )
    if noise:
        parts.append(
            f"{noise} burst{'s' if noise > 1 else ''} of 429s were noise (they did not fall when "
            "the pace was cut): full speed, each refused request waited its own Retry-After"
        )
    capacity = int(totals.get("backpressure_capacity_429", 0))
    if capacity:
        parts.append(
            f"{capacity} answer{'s' if capacity > 1 else ''} 429 'resource unavailable' (the "
            "provider short of capacity, as flex is; not billed): noise, each waited its own "
            "Retry-After, the pace untouched"
        )
    return "  back-pressure " + ("; ".join(parts) if parts else "full speed: no rate limit met")


def every_row_failed(totals: dict[str, float]) -> bool:
    """Rows were read and every one of them failed: the run did nothing it was asked to. Rows
    waiting in submitted batches are neither described nor failed: a run that submitted them
    did its work (a scheduler's submit step must succeed)."""
    return (
        totals.get("images_failed", 0) > 0
        and totals.get("images_described", 0) == 0
        and totals.get("batch_rows_pending", 0) == 0
    )


def run_prices(opts: DescribeImagesOptions) -> tuple[tuple[float, float], str]:
    """(input, output) USD per 1M tokens the run is billed at (``pricing.billed_prices``: the
    batch rate with --mode batch, the flex rate with --service_tier flex, where the model's is
    known, else the online prices), and where they come from."""
    spec = models.spec_for(opts.model)
    table = derived(opts).prices
    online = pricing.prices(spec, table)
    mode = "batch" if opts.mode == "batch" else "online"
    billed = pricing.billed_prices(spec, table, mode, opts.service_tier)
    where = "--price_table" if opts.model in table else "list"
    if mode == "batch":
        kind = f"batch prices (half the {where} prices)"
    elif opts.service_tier == "flex":
        kind = f"flex prices (half the {where} prices; answers not served on flex at {where})"
    else:
        return online, f"{where} prices"
    known = (pricing.batch_prices if mode == "batch" else pricing.flex_prices)(spec, table)
    if known is None:
        return online, f"{where} prices (no {'batch' if mode == 'batch' else 'flex'} price known)"
    return billed, kind


def _price_source(opts: DescribeImagesOptions) -> str:
    prices, where = run_prices(opts)
    return f"{where} (${prices[0]:g} / ${prices[1]:g} per 1M input / output tokens)"


def format_dry_run(totals: dict[str, float], opts: DescribeImagesOptions) -> str:
    """What the run would send and cost, from the ``EstimateRequests`` counters, at the prices
    of the run's mode and tier (``run_prices``)."""
    spec = models.spec_for(opts.model)
    prices, _ = run_prices(opts)
    image_t = int(totals.get("estimated_image_tokens", 0))
    text_t = int(totals.get("estimated_text_tokens", 0))
    bound = int(totals.get("estimated_completion_tokens", 0))
    requests = int(totals.get("dry_run_requests", 0))
    prompt_cost = pricing.cost(prices, image_t + text_t, 0)
    same_bytes = int(
        totals.get("rows_sharing_identical_bytes", 0) + totals.get("dry_run_same_bytes", 0)
    )
    lines = [
        f"vision-enrich dry run: nothing was sent ({opts.model}, {spec.family} family"
        + ("" if spec.known else ", not in the catalogue: OpenAI formula")
        + ")",
        f"  rows        {int(totals.get('dry_run_rows', 0))} planned, "
        f"{int(totals.get('rows_skipped_existing', 0))} skipped as already described, "
        f"{int(totals.get('images_failed', 0))} with a prompt that cannot be built",
        f"  requests    {requests} "
        f"({int(totals.get('rows_sharing_a_request', 0))} rows share a reference, "
        f"{same_bytes} rows identical bytes; "
        f"{int(totals.get('dry_run_unreadable', 0))} rows unreadable, would fail; "
        f"{int(totals.get('dry_run_unknown_size', 0))} images by URL, size unknown)",
        f"  tokens      {image_t} image + {text_t} text prompt tokens (estimated), "
        f"completion up to {bound}",
        f"  cost        ${prompt_cost:.4f} for the prompts, up to "
        f"${pricing.cost(prices, image_t + text_t, bound):.4f} with every completion at "
        f"--max_tokens; {_price_source(opts)}",
        f"  elapsed     {totals['elapsed_s']:.1f} s",
    ]
    cache = cache_line(opts, requests, prices, image_t + text_t, bound)
    if cache:
        lines.insert(-1, cache)
    return "\n".join(lines)


def cache_line(
    opts: DescribeImagesOptions,
    requests: int = 0,
    prices: tuple[float, float] = (0.0, 0.0),
    prompt_tokens: int = 0,
    bound: int = 0,
) -> str | None:
    """Whether the part of each request that repeats row to row (system prompt, a prompt
    without a template, the schema instructions sent in the prompt) is long enough for the
    provider to cache, and what the run's prompts cost if it is read from the cache by every
    request after the first; None where the provider's caching is unknown."""
    spec = models.spec_for(opts.model)
    text = derived(opts).output_schema
    schema = structured.parse_output_schema(text, RESERVED_COLUMNS) if text else None
    repeating = [opts.system_prompt or "", sent_instructions(spec, schema)]
    if not opts.prompt_template:
        repeating.append(opts.prompt or "")
    prefix = sum(image_sizes.text_tokens(t) for t in repeating if t)
    table = derived(opts).prices
    own = caching.rule_with_prices(
        spec, pricing.prices(spec, table)[0], derived(opts).cache_prices.get(opts.model)
    )
    note = caching.prefix_note(spec, prefix, own)
    if not note:
        return None
    mode = "batch" if opts.mode == "batch" else "online"
    rule = caching.applies(spec, mode, own)
    reads, writes = caching.expected_cache(rule, requests, prefix)
    if rule is None:
        note += "; online requests carry no cache_control (only batch lines do): not cached"
    elif reads:
        ttl = "1h" if mode == "batch" else "5m"
        low = caching.cached_cost(prices, rule, prompt_tokens, 0, reads, writes, ttl)
        high = caching.cached_cost(prices, rule, prompt_tokens, bound, reads, writes, ttl)
        note += (
            f"; read from the cache by every request after the first: ${low:.4f} for the "
            f"prompts, up to ${high:.4f}"
        )
    return f"  caching     {note}"
