"""``EstimateRequests``: what a run would send and cost, without calling the API (``--dry_run``).

    estimates = groups | EstimateRequests(cfg)

For each planned request (``PlanRequests`` output) the image's header is read for its size (no
pixel decode; the bytes are read, for the content hash), the size is scaled as the real run would
scale it, and the prompt is estimated by the model family's formula (``models.estimate_tokens``).
Identical bytes asked the same question count once per worker process, as in the real run. Totals
land in counters (namespace ``vision_enrich``, names ``dry_run_*`` and ``estimated_*``); each
element out is one request's estimate.
"""

from __future__ import annotations

import threading

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.describe_config import (
    NAMESPACE,
    DescribeConfig,
    image_options,
    question,
    scaled_size,
    sent_instructions,
)
from transforms.core.images import loader as images
from transforms.core.images import sources
from transforms.core.question import models


class _Estimate(beam.DoFn):
    def __init__(self, cfg: DescribeConfig):
        self._cfg = cfg

    def setup(self):
        cfg = self._cfg
        self._spec = models.spec_for(cfg.chat.model)
        self._template, self._schema = question(cfg)
        self._instructions = sent_instructions(self._spec, self._schema)
        options = image_options(cfg, self._spec)
        self._loader = images.ImageLoader(options)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        c = lambda name: Metrics.counter(NAMESPACE, name)  # noqa: E731
        self._rows, self._requests = c("dry_run_rows"), c("dry_run_requests")
        self._unreadable, self._same_bytes = c("dry_run_unreadable"), c("dry_run_same_bytes")
        self._unknown_size = c("dry_run_unknown_size")
        self._image_t, self._text_t = c("estimated_image_tokens"), c("estimated_text_tokens")
        self._completion_t = c("estimated_completion_tokens")

    def teardown(self):
        self._loader.close()

    def process(self, ref):
        chat = self._cfg.chat
        rows = 1 + len(ref.get("duplicates") or ())
        self._rows.inc(rows)
        try:
            found = self._loader.inspect(ref.get("image_uri"))
        except sources.ImageError as exc:
            self._unreadable.inc(rows)
            yield {"image_id": ref.get("image_id"), "rows": rows, "error": exc.message}
            return
        except Exception as exc:  # a surprise in one image must not end the dry run
            self._unreadable.inc(rows)
            yield {"image_id": ref.get("image_id"), "rows": rows, "error": type(exc).__name__}
            return
        if found.sha256:
            with self._lock:
                seen = (found.sha256, ref["request_key"]) in self._seen
                self._seen.add((found.sha256, ref["request_key"]))
            if seen:
                self._same_bytes.inc(rows)
                return
        if found.width is None:
            self._unknown_size.inc()
        width, height = scaled_size(
            found.width, found.height, self._loader.options.max_side, self._spec, chat.detail
        )
        image_t, text_t, bound = models.estimate_tokens(
            self._spec,
            width,
            height,
            chat.detail,
            ref["prompt"],
            chat.system_prompt,
            chat.max_tokens,
            self._instructions,
        )
        self._requests.inc()
        self._image_t.inc(image_t)
        self._text_t.inc(text_t)
        self._completion_t.inc(bound)
        yield {
            "image_id": ref.get("image_id"),
            "rows": rows,
            "width": width,
            "height": height,
            "image_tokens": image_t,
            "text_tokens": text_t,
        }


class EstimateRequests(beam.PTransform):
    def __init__(self, cfg: DescribeConfig, label: str | None = None):
        super().__init__(label)
        self._cfg = cfg

    def expand(self, groups):
        return groups | "EstimateTokens" >> beam.ParDo(_Estimate(self._cfg))
