"""Manifest records that cannot be read, given back by the provider or else a stop. No Beam import.

A truncated record file must never lead to paying again: ignoring it would put its lines in a new
batch, the provider would answer them a second time, and the new record would overwrite the old
one with the first batch's id. So, before a shard plans anything, each unreadable record is:

- found again in the provider's own list of batches (OpenAI's ``GET /batches``, which the
  embedded endpoint and the test fake serve too): the job tags every batch with
  ``metadata.vision_enrich`` = the record's key. Its lines are read back from the batch's input
  file and checked against the key (the key is a hash of them). The unreadable file is moved to
  ``<--batch_state>/unreadable/`` (kept, never overwritten) and the rebuilt record saved;
- or, when no listed batch carries the tag, or the protocol keeps no tag (Anthropic's Message
  Batches and AI/ML API's have no metadata), the job stops with one line naming the record file
  and what to do (``RecordUnreadableError``), before anything is uploaded.
"""

from __future__ import annotations

import logging

from transforms.core.batch.manifest import Manifest
from transforms.core.batch.records import BatchRecord, chunk_key
from transforms.core.batch.transport import BatchHttpError

_LOGGER = logging.getLogger(__name__)

UNREADABLE = "vision-enrich batch manifest record unreadable"


class RecordUnreadableError(RuntimeError):
    """One line a person can act on (runners may wrap it: ``error_line`` finds it again)."""

    def __init__(self, message: str):
        super().__init__(message if UNREADABLE in message else f"{UNREADABLE}: {message}")


def error_line(exc: BaseException) -> str | None:
    text = str(exc)
    at = text.find(UNREADABLE)
    return text[at:].splitlines()[0][:1500] if at != -1 else None


def recover(manifest: Manifest, sender) -> list[BatchRecord]:
    """Records rebuilt for every unreadable file in ``manifest`` (after ``load``), or raise."""
    out = []
    for key, path in sorted(manifest.unreadable.items()):
        batch, why = None, "the provider lists no batch tagged with its key"
        find = getattr(sender, "find_tagged", None)
        if find is None:
            why = f"the {sender.protocol} batch API keeps no tag to find its batch by"
        else:
            try:
                batch = find(key)
            except BatchHttpError as exc:
                why = f"the provider's list of batches could not be read ({exc.message})"
        record = None
        if batch is not None:
            try:
                record = sender.recovered(key, batch)
            except BatchHttpError as exc:
                why = f"the input file of batch {batch.get('id')} could not be read ({exc.message})"
            if record is not None and chunk_key(record.custom_ids) != key:
                why, record = f"batch {record.batch_id} does not hold the lines its tag says", None
        if record is None:
            raise RecordUnreadableError(
                f"{path} cannot be read and {why}. Restore the file (from a backup or the "
                "provider's console: the batch id is what it needs) and rerun; or, to send its "
                "lines again (paid again if its batch ran), move it out of "
                f"{manifest.dir} and rerun"
            )
        kept = manifest.set_aside(key)
        manifest.save(record)
        _LOGGER.warning(
            "manifest record %s was unreadable (kept as %s): rebuilt from batch %s (%s)",
            path,
            kept,
            record.batch_id,
            record.state,
        )
        out.append(record)
    return out
