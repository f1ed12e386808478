"""What a review page shows, read from a run's output without reading every row. No Beam import.

Two sources, one shape (``RunData``): Parquet here, BigQuery in ``review.bigquery_data``.


- **Parquet** (``parquet_run``): the row counts come from each file's footer. The sample is
  ``n`` row numbers drawn at random (seeded) over all description files together; only the row
  groups holding a drawn row are read, a batch at a time, and only the columns the page shows, so
  memory is bounded by one batch whatever the size of the run. Totals (tokens, requests) and the
  failure groups stream the files batch by batch over the few columns they need.
- **BigQuery** (``review.bigquery_data.bigquery_run``): the same figures from three queries.

Values are returned as they are stored; ``review.page`` makes them safe where it renders them.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import rows as schema

MAX_IDS = 20  # affected ids listed per failure group (the total is always shown)
MAX_DISTINCT = 20  # reported models / request keys remembered for the header
BATCH_ROWS = 8192
# what a card shows, besides the structured columns (every column the job did not declare)
CARD_COLUMNS = (
    "image_id",
    "image_uri",
    "description",
    "model",
    "requested_model",
    "billed",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "service_tier",
    "finish_reason",
    "latency_ms",
    "attempts",
    "image_mime",
    "image_width",
    "image_height",
)
DECLARED = {f.name for f in schema.DESCRIPTION_FIELDS}
_TOTAL_COLUMNS = (
    "requested_model",
    "model",
    "request_key",
    "billed",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "service_tier",
    "attempts",
)
_FAILURE_COLUMNS = ("stage", "error_type", "error", "image_id", "attempts")
TABLE = re.compile(r"^[A-Za-z0-9_.-]+[:.][A-Za-z0-9_]+\.[A-Za-z0-9_$-]+\Z")


@dataclasses.dataclass
class ModelUsage:
    rows: int = 0
    billed_rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it

    def minus(self, other: ModelUsage) -> ModelUsage:
        return ModelUsage(
            *(getattr(self, f.name) - getattr(other, f.name) for f in dataclasses.fields(self))
        )


@dataclasses.dataclass
class Totals:
    described: int = 0
    failed: int = 0
    requests: int = 0  # HTTP attempts recorded on billed description rows and on failures
    by_model: dict[str, ModelUsage] = dataclasses.field(default_factory=dict)  # requested_model
    # the part of by_model's usage the flex tier served (service_tier "flex"), priced apart
    flex_by_model: dict[str, ModelUsage] = dataclasses.field(default_factory=dict)
    reported_models: dict[str, int] = dataclasses.field(default_factory=dict)  # model -> rows
    keys: set[str] = dataclasses.field(default_factory=set)  # request_key, MAX_DISTINCT + 1 at most
    distinct_keys: int | None = None  # counted by the source instead (BigQuery)

    @property
    def request_keys(self) -> int:
        """Distinct questions (request_key); over MAX_DISTINCT means 'more than that'."""
        return self.distinct_keys if self.distinct_keys is not None else len(self.keys)

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt_tokens for u in self.by_model.values())

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.by_model.values())

    @property
    def billed_rows(self) -> int:
        return sum(u.billed_rows for u in self.by_model.values())


@dataclasses.dataclass
class FailureGroup:
    stage: str
    error_type: str | None
    count: int = 0
    example: str = ""
    ids: list[str] = dataclasses.field(default_factory=list)
    attempts: int = 0


@dataclasses.dataclass
class RunData:
    source: str  # where the rows were read, for the header
    totals: Totals
    cards: list[dict[str, Any]]  # the sampled description rows, in storage order
    extra_columns: list[str]  # structured columns (the job's --output_schema, Llama Guard)
    failures: list[FailureGroup]


Opener = Callable[[str], BinaryIO]


def open_local(path: str) -> BinaryIO:
    return open(path, "rb")


# -- Parquet -------------------------------------------------------------------------------------
def parquet_run(
    source: str,
    description_files: Sequence[str],
    failure_files: Sequence[str],
    sample: int,
    seed: int,
    opener: Opener = open_local,
) -> RunData:
    totals = Totals()
    columns = _file_columns(description_files, opener)
    extra = [c for c in columns if c not in DECLARED]
    cards = sample_parquet(description_files, sample, seed, opener, list(CARD_COLUMNS) + extra)
    for path in description_files:
        with opener(path) as f:
            _add_totals(totals, pq.ParquetFile(f))
    groups: dict[tuple[str, str | None], FailureGroup] = {}
    for path in failure_files:
        with opener(path) as f:
            pf = pq.ParquetFile(f)
            totals.failed += pf.metadata.num_rows
            _add_failures(groups, pf)
    totals.requests += sum(g.attempts for g in groups.values())
    return RunData(source, totals, cards, extra, ordered(groups.values()))


def _file_columns(files: Sequence[str], opener: Opener) -> list[str]:
    seen: dict[str, None] = {}
    for path in files[:1] + files[-1:]:  # the job writes one schema per run; first and last
        with opener(path) as f:
            for name in pq.ParquetFile(f).schema_arrow.names:
                seen.setdefault(name, None)
    return list(seen)


def sample_parquet(
    files: Sequence[str], n: int, seed: int, opener: Opener, columns: Sequence[str]
) -> list[dict[str, Any]]:
    """``n`` rows drawn uniformly at random (seeded) from all ``files`` together, in storage
    order. Counts come from the footers; only row groups holding a drawn row are read."""
    layout: list[tuple[str, list[int]]] = []  # per file: rows per row group
    total = 0
    for path in files:
        with opener(path) as f:
            meta = pq.ParquetFile(f).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        layout.append((path, sizes))
        total += sum(sizes)
    if n <= 0 or total == 0:
        return []
    picks = sorted(random.Random(seed).sample(range(total), min(n, total)))
    wanted: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    start, at = 0, 0
    for file_index, (_, sizes) in enumerate(layout):
        for group, size in enumerate(sizes):
            end = start + size
            while at < len(picks) and picks[at] < end:
                wanted[(file_index, group)].append(picks[at] - start)
                at += 1
            start = end
    rows: list[dict[str, Any]] = []
    by_file: dict[int, list[int]] = collections.defaultdict(list)
    for file_index, group in wanted:
        by_file[file_index].append(group)
    for file_index, groups in sorted(by_file.items()):
        with opener(layout[file_index][0]) as f:
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            for group in sorted(groups):
                rows.extend(take_rows(pf, group, wanted[(file_index, group)], present))
    return rows


def take_rows(pf: pq.ParquetFile, group: int, offsets: list[int], columns: list[str]) -> list[dict]:
    """The rows at ``offsets`` (sorted) of one row group, reading it a batch at a time."""
    out, start, i = [], 0, 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns):
        end = start + batch.num_rows
        local = []
        while i < len(offsets) and offsets[i] < end:
            local.append(offsets[i] - start)
            i += 1
        if local:
            out.extend(batch.take(pa.array(local, pa.int64())).to_pylist())
        if i == len(offsets):
            break
        start = end
    return out


def _present(pf: pq.ParquetFile, names: Iterable[str]) -> list[str]:
    have = set(pf.schema_arrow.names)
    return [n for n in names if n in have]


def _add_totals(totals: Totals, pf: pq.ParquetFile) -> None:
    totals.described += pf.metadata.num_rows
    columns = _present(pf, _TOTAL_COLUMNS)
    for batch in pf.iter_batches(batch_size=65536, columns=columns):
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        billed = table["billed"] if "billed" in columns else pa.chunked_array([pa.repeat(True, n)])
        billed = pc.fill_null(billed, True)
        model = table["requested_model"] if "requested_model" in columns else None
        model = pc.fill_null(model, "") if model is not None else pa.repeat("", n)
        if "service_tier" in columns:
            tier = pc.if_else(pc.equal(pc.fill_null(table["service_tier"], ""), "flex"), 1, 0)
        else:
            tier = pa.repeat(0, n)
        work = pa.table(
            {
                "requested_model": model,
                "flex": tier,
                "billed": pc.cast(billed, pa.int64()),
                "prompt": _billed_int(table, "prompt_tokens", billed, n),
                "completion": _billed_int(table, "completion_tokens", billed, n),
                "cached": _billed_int(table, "cached_prompt_tokens", billed, n),
                "written": _billed_int(table, "cache_write_tokens", billed, n),
                "attempts": _billed_int(table, "attempts", billed, n),
            }
        )
        agg = work.group_by(["requested_model", "flex"], use_threads=False).aggregate(
            [
                ([], "count_all"),
                ("billed", "sum"),
                ("prompt", "sum"),
                ("completion", "sum"),
                ("cached", "sum"),
                ("written", "sum"),
                ("attempts", "sum"),
            ]
        )
        for row in agg.to_pylist():
            parts = [totals.by_model.setdefault(row["requested_model"], ModelUsage())]
            if row["flex"]:
                parts.append(totals.flex_by_model.setdefault(row["requested_model"], ModelUsage()))
            for usage in parts:
                usage.rows += row["count_all"]
                usage.billed_rows += row["billed_sum"] or 0
                usage.prompt_tokens += row["prompt_sum"] or 0
                usage.completion_tokens += row["completion_sum"] or 0
                usage.cached_tokens += row["cached_sum"] or 0
                usage.cache_write_tokens += row["written_sum"] or 0
            totals.requests += row["attempts_sum"] or 0
        if "model" in columns:
            counts = pc.value_counts(table["model"]).to_pylist()
            for item in counts:
                name = item["values"] or ""
                if name in totals.reported_models or len(totals.reported_models) < MAX_DISTINCT:
                    totals.reported_models[name] = (
                        totals.reported_models.get(name, 0) + item["counts"]
                    )
        if "request_key" in columns and len(totals.keys) <= MAX_DISTINCT:
            for key in pc.unique(table["request_key"]).to_pylist():
                if key and len(totals.keys) <= MAX_DISTINCT:
                    totals.keys.add(key)


def _billed_int(table: pa.Table, name: str, billed, n: int):
    if name not in table.column_names:
        return pa.repeat(0, n).cast(pa.int64())
    values = pc.fill_null(pc.cast(table[name], pa.int64()), 0)
    return pc.if_else(billed, values, 0)


def _add_failures(groups: dict[tuple[str, str | None], FailureGroup], pf: pq.ParquetFile) -> None:
    columns = _present(pf, _FAILURE_COLUMNS)
    if "stage" not in columns:
        return
    for batch in pf.iter_batches(batch_size=65536, columns=columns):
        table = pa.Table.from_batches([batch])
        if "error_type" not in columns:
            table = table.append_column("error_type", pa.nulls(table.num_rows, pa.string()))
        if "attempts" not in columns:
            table = table.append_column("attempts", pa.repeat(0, table.num_rows).cast(pa.int64()))
        agg = table.group_by(["stage", "error_type"], use_threads=False).aggregate(
            [([], "count_all"), ("attempts", "sum")]
        )
        for row in agg.to_pylist():
            key = (row["stage"] or "", row["error_type"])
            group = groups.get(key)
            if group is None:
                group = groups[key] = FailureGroup(*key)
            group.count += row["count_all"]
            group.attempts += row["attempts_sum"] or 0
            if group.example and len(group.ids) >= MAX_IDS:
                continue
            same = pc.equal(pc.fill_null(table["stage"], ""), key[0])
            kind = table["error_type"]
            same = pc.and_(same, pc.is_null(kind) if key[1] is None else pc.equal(kind, key[1]))
            mine = table.filter(same)
            if not group.example and "error" in columns and mine.num_rows:
                group.example = mine["error"][0].as_py() or ""
            if "image_id" in columns:
                room = MAX_IDS - len(group.ids)
                group.ids.extend(i or "(no id)" for i in mine["image_id"][:room].to_pylist())


def ordered(groups: Iterable[FailureGroup]) -> list[FailureGroup]:
    return sorted(groups, key=lambda g: (-g.count, g.stage, g.error_type or ""))
