"""``GroupByContent``: planned requests -> one request per distinct (image bytes, question).

    groups = planned | GroupByContent(cfg)

``PlanRequests`` groups rows by reference; the same bytes under different references (a product
photo copied to every SKU's folder, one upload behind many URLs) would still be sent once per
reference. Here every image's bytes are read and hashed (not decoded), and requests whose bytes
and ``request_key`` are equal are merged through a shuffle, so the merge holds across workers: one
reference is sent, every other row rides along in its ``duplicates`` and gets the same answer.
The price is one extra read of each image, far below the price of one request.

The reference that is sent is the smallest (``image_uri``, ``image_id``) of its group, so which
row is marked ``billed`` does not depend on the runner. Without ``--skip_existing`` this is the
job's only shuffle: rows with the same reference have the same bytes, so ``PlanRequests`` does not
group them first (``rows_sharing_a_request`` counts them here), and each reference is read once
per worker (a bounded cache of digests by reference). Elements travel packed
(``describe_config.RefPacker``) under a 16-byte key, so that a local run's memory stays flat in
the number of rows. A reference that cannot be read here, and
an http(s) image sent by URL (never read by the job), stays a request of its own: the describe
step reads it again and writes its failure row, or sends its URL.
"""

from __future__ import annotations

import collections
import hashlib

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core import describe_config, ledger
from transforms.core.images import loader as images
from transforms.core.question import models

_DIGESTS_KEPT = 4096  # references whose digest a worker remembers (duplicate rows read once)


def _short_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


class _KeyByContent(beam.DoFn):
    def __init__(self, cfg: describe_config.DescribeConfig):
        self._cfg = cfg

    def setup(self):
        spec = models.spec_for(self._cfg.chat.model)
        self._loader = images.ImageLoader(describe_config.image_options(self._cfg, spec))
        self._unread = Metrics.counter(describe_config.NAMESPACE, "content_hash_unread")
        self._packer = describe_config.RefPacker(self._cfg)
        self._digests: collections.OrderedDict[str, str | None] = collections.OrderedDict()

    def teardown(self):
        self._loader.close()

    def _digest(self, uri) -> str | None:
        cacheable = isinstance(uri, str) and not uri.startswith("data:")
        if cacheable and uri in self._digests:
            self._digests.move_to_end(uri)
            return self._digests[uri]
        try:
            digest = self._loader.content_hash(uri)
        except Exception:  # the describe step reads it again and reports why it cannot
            self._unread.inc()
            return None
        if cacheable:
            self._digests[uri] = digest
            if len(self._digests) > _DIGESTS_KEPT:
                self._digests.popitem(last=False)
        return digest

    def process(self, ref):
        digest = self._digest(ref.get("image_uri"))
        if digest is None:
            key = ledger.reference_key(ref.get("image_uri"), ref["request_key"])
        else:
            key = f"sha256:{digest}:{ref['request_key']}"
        yield _short_key(key), self._packer.pack(ref)


def _order(ref) -> tuple[str, str]:
    return str(ref.get("image_uri")), str(ref.get("image_id"))


class _Merge(beam.DoFn):
    """(key, requests) -> one request whose ``duplicates`` hold every other row of the group."""

    def __init__(self, cfg: describe_config.DescribeConfig):
        self._cfg = cfg

    def setup(self):
        self._shared = Metrics.counter(describe_config.NAMESPACE, "rows_sharing_identical_bytes")
        self._same_reference = Metrics.counter(describe_config.NAMESPACE, "rows_sharing_a_request")
        self._packer = describe_config.RefPacker(self._cfg)

    def process(self, element):
        _key, grouped = element
        refs = sorted((self._packer.unpack(p) for p in grouped), key=_order)
        if len(refs) == 1:
            yield refs[0]
            return
        first = dict(refs[0])
        riders = list(first.get("duplicates") or ())
        # rows of one reference that PlanRequests did not group (no --skip_existing) share a
        # request as rows_sharing_a_request; the rest share identical bytes
        per_reference = collections.Counter(str(ref.get("image_uri")) for ref in refs)
        same_reference = sum(n - 1 for n in per_reference.values())
        for ref in refs[1:]:
            riders.append({"image_id": ref.get("image_id"), "image_uri": ref.get("image_uri")})
            riders.extend(ref.get("duplicates") or ())
        if same_reference:
            self._same_reference.inc(same_reference)
        shared = (
            len(riders)
            - len(first.get("duplicates") or ())
            - (per_reference[str(first.get("image_uri"))] - 1)
        )
        if shared:
            self._shared.inc(shared)
        first["duplicates"] = riders
        yield first


class GroupByContent(beam.PTransform):
    def __init__(self, cfg: describe_config.DescribeConfig, label: str | None = None):
        super().__init__(label)
        self._cfg = cfg

    def expand(self, planned):
        return (
            planned
            | "HashImages" >> beam.ParDo(_KeyByContent(self._cfg))
            | "GroupByContent" >> beam.GroupByKey()
            | "OneRequestPerContent" >> beam.ParDo(_Merge(self._cfg))
        )
