"""``GroupByContent``: planned requests -> one request per distinct (image bytes, question).

    groups = planned | GroupByContent(cfg)

``PlanRequests`` groups rows by reference; the same bytes under different references (a product
photo copied to every SKU's folder, one upload behind many URLs) would still be sent once per
reference. Here every image's bytes are read and hashed (not decoded), and requests whose bytes
and ``request_key`` are equal are merged through a shuffle, so the merge holds across workers: one
reference is sent, every other row rides along in its ``duplicates`` and gets the same answer.
The price is one extra read of each image, far below the price of one request.

The reference that is sent is the smallest (``image_uri``, ``image_id``) of its group, so which
row is marked ``billed`` does not depend on the runner. A reference that cannot be read here, and
an http(s) image sent by URL (never read by the job), stays a request of its own: the describe
step reads it again and writes its failure row, or sends its URL.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import describe_images as di
from transforms.core import images, ledger, models


class _KeyByContent(beam.DoFn):
    def __init__(self, cfg: di.DescribeConfig):
        self._cfg = cfg

    def setup(self):
        spec = models.spec_for(self._cfg.chat.model)
        self._loader = images.ImageLoader(di.image_options(self._cfg, spec))
        self._unread = Metrics.counter(di.NAMESPACE, "content_hash_unread")

    def teardown(self):
        self._loader.close()

    def process(self, ref):
        try:
            digest = self._loader.content_hash(ref.get("image_uri"))
        except Exception:  # the describe step reads it again and reports why it cannot
            self._unread.inc()
            digest = None
        if digest is None:
            yield ledger.reference_key(ref.get("image_uri"), ref["request_key"]), ref
        else:
            yield f"sha256:{digest}:{ref['request_key']}", ref


def _order(ref) -> tuple[str, str]:
    return str(ref.get("image_uri")), str(ref.get("image_id"))


class _Merge(beam.DoFn):
    """(key, requests) -> one request whose ``duplicates`` hold every other row of the group."""

    def setup(self):
        self._shared = Metrics.counter(di.NAMESPACE, "rows_sharing_identical_bytes")

    def process(self, element):
        _key, grouped = element
        refs = sorted(grouped, key=_order)
        if len(refs) == 1:
            yield refs[0]
            return
        first = dict(refs[0])
        riders = list(first.get("duplicates") or ())
        for ref in refs[1:]:
            riders.append({"image_id": ref.get("image_id"), "image_uri": ref.get("image_uri")})
            riders.extend(ref.get("duplicates") or ())
        self._shared.inc(len(riders) - len(first.get("duplicates") or ()))
        first["duplicates"] = riders
        yield first


class GroupByContent(beam.PTransform):
    def __init__(self, cfg: di.DescribeConfig, label: str | None = None):
        super().__init__(label)
        self._cfg = cfg

    def expand(self, planned):
        return (
            planned
            | "HashImages" >> beam.ParDo(_KeyByContent(self._cfg))
            | "GroupByContent" >> beam.GroupByKey()
            | "OneRequestPerContent" >> beam.ParDo(_Merge())
        )
