"""The durable manifest of submitted batches, in a folder local or gs:// (``--batch_state``).
No Beam pipeline code: it reads and writes through Beam's ``FileSystems``.

Each batch is one JSON file, ``<folder>/batches/<key>.json`` (``key``: a hash of the custom_ids it
holds), rewritten whole at each change of state: written to a temporary name first, then renamed
over the old one, so a reader sees the old record or the new one, never half of one. The first
write happens the moment the provider has the batch's file (and again when it has the batch id),
before anything else can go wrong: a job killed at any later point leaves a record that the next
run of the same command resumes instead of paying again.

A record that cannot be read (a truncated file) is never ignored and never overwritten:
``load`` lists it in ``unreadable`` and ``save`` refuses its key until ``set_aside`` has moved it
to ``<folder>/unreadable/`` (``batch.recovery`` does that once the provider's own list of batches
has given the record back, or stops the job).
"""

from __future__ import annotations

import json
import logging
import uuid

from apache_beam.io.filesystems import FileSystems

from transforms.core.batch.records import BatchRecord

_LOGGER = logging.getLogger(__name__)


class UnreadableRecord(RuntimeError):
    """A manifest record that cannot be read would be overwritten; the message says what to do."""


class Manifest:
    def __init__(self, folder: str):
        self.folder = folder.rstrip("/")
        self.dir = FileSystems.join(self.folder, "batches")
        self.unreadable: dict[str, str] = {}  # key -> path of a record file that cannot be read

    def path(self, key: str) -> str:
        return FileSystems.join(self.dir, f"{key}.json")

    def load(self) -> list[BatchRecord]:
        try:
            found = FileSystems.match([FileSystems.join(self.dir, "*.json")])[0].metadata_list
        except Exception:  # no folder yet: nothing submitted
            return []
        records, self.unreadable = [], {}
        for meta in sorted(found, key=lambda m: m.path):
            try:
                with FileSystems.open(meta.path) as f:
                    records.append(BatchRecord.from_json(json.loads(f.read().decode("utf-8"))))
            except Exception as exc:
                key = meta.path.rsplit("/", 1)[-1][: -len(".json")]
                self.unreadable[key] = meta.path
                _LOGGER.warning("manifest record %s is unreadable (%s)", meta.path, exc)
        return records

    def set_aside(self, key: str) -> str:
        """Move an unreadable record out of the manifest (kept, never overwritten)."""
        path = self.unreadable.pop(key)
        kept = FileSystems.join(self.folder, "unreadable", f"{key}-{uuid.uuid4().hex[:8]}.json")
        with FileSystems.open(path) as src, FileSystems.create(kept) as dst:
            dst.write(src.read())
        FileSystems.delete([path])
        return kept

    def save(self, record: BatchRecord) -> None:
        if record.key in self.unreadable:
            raise UnreadableRecord(
                f"will not overwrite the unreadable manifest record {self.unreadable[record.key]}"
            )
        final = self.path(record.key)
        temp = FileSystems.join(self.dir, f"tmp-{uuid.uuid4().hex}.partial")
        data = json.dumps(record.to_json(), separators=(",", ":")).encode()
        with FileSystems.create(temp) as f:
            f.write(data)
        # a local rename replaces the old record atomically; on GCS it is a copy that
        # overwrites (an object appears whole) and a delete of the temporary one
        FileSystems.rename([temp], [final])
