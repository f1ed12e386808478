"""A loopback HTTP proxy in front of bqemulator's REST API that fills the emulator's gaps the job
meets, records what it is asked, and refuses what a test tells it to.

bqemulator 1.4.0 differs from BigQuery where Beam's reader and writer depend on it:

- ``datasets.list`` ignores ``filter``. Beam's read clean-up lists the datasets labelled as its
  temporary ones and deletes each, so on the bare emulator it deletes every dataset, the
  source's too. The proxy applies the label filter (``labels.KEY:VALUE``, space-separated).
- a query job's ``destinationTable`` is ignored, so Beam's ``--input_query`` finds no temporary
  table to export. After such a job the proxy materialises the query into that table
  (``CREATE OR REPLACE TABLE ... AS``).
- an extract job does not create the folder it writes to, and writes a destination URI's ``*``
  as a literal ``*``: the proxy creates the folder under ``gcs_root`` (the folder
  fake-gcs-server and the emulator share) and names the one file ``000000000000`` where the
  ``*`` stands, as BigQuery numbers its files. fake-gcs-server lists only objects it stored
  itself (it keeps their metadata beside them), so the proxy then uploads each extracted file
  through ``gcs_url``.
- load jobs keep no ``timePartitioning`` or ``clustering``: tests read them from ``jobs``, the
  job requests as sent.
- ``tables.testIamPermissions`` is not implemented (405; the emulator has no IAM): the proxy
  grants every permission asked for, unless ``refuse`` says otherwise.

``refuse`` maps a regular expression on ``METHOD /path`` to ``(status, reason)``: matching
requests are answered with that BigQuery error instead of being forwarded (403s for permission
checks the emulator has no IAM to make).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import urllib.parse

import requests


class BigQueryGapProxy:
    HOP_HEADERS = ("content-length", "transfer-encoding", "connection", "content-encoding")

    def __init__(self, upstream: str, gcs_root: str | None = None, gcs_url: str | None = None):
        self.upstream, self.gcs_root, self.gcs_url = upstream, gcs_root, gcs_url
        self.jobs: list[dict] = []  # every jobs.insert body, as sent
        self.refuse: dict[str, tuple[int, str]] = {}
        self._session = requests.Session()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status, headers, content):
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in proxy.HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "accept-encoding")
                }
                self._send(*proxy.handle(self.command, self.path, body, headers))

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _call(self, method, path, body=b"", headers=None):
        return self._session.request(
            method, self.upstream + path, data=body or None, headers=headers or {}, timeout=60
        )

    def handle(self, method, path, body, headers):
        for pattern, (status, reason) in list(self.refuse.items()):
            if re.search(pattern, f"{method} {path}"):
                error = {"code": status, "message": reason, "errors": [{"reason": reason}]}
                return (
                    status,
                    [("Content-Type", "application/json")],
                    json.dumps({"error": error}).encode(),
                )
        parsed = urllib.parse.urlsplit(path)
        if method == "POST" and parsed.path.endswith(":testIamPermissions"):
            asked = json.loads(body or b"{}").get("permissions", [])
            granted = json.dumps({"permissions": asked}).encode()
            return 200, [("Content-Type", "application/json")], granted
        job = None
        if method == "POST" and re.fullmatch(r"/bigquery/v2/projects/[^/]+/jobs", parsed.path):
            job = json.loads(body or b"{}")
            self.jobs.append(job)
            body = self._before_job(job)
        r = self._call(method, path, body, headers)
        content = r.content
        if job is not None and r.ok:
            self._after_job(job, headers)
        if (
            method == "GET"
            and re.fullmatch(r"/bigquery/v2/projects/[^/]+/datasets", parsed.path)
            and r.ok
        ):
            wanted = urllib.parse.parse_qs(parsed.query).get("filter", [""])[0]
            content = self._filter_datasets(content, wanted, headers)
        return r.status_code, r.headers.items(), content

    def _before_job(self, job) -> bytes:
        """The body to forward."""
        extract = job.get("configuration", {}).get("extract")
        if extract and self.gcs_root:
            job = json.loads(json.dumps(job))
            uris = [u.replace("*", "000000000000") for u in extract.get("destinationUris", [])]
            job["configuration"]["extract"]["destinationUris"] = uris
            for uri in uris:
                relative = uri[len("gs://") :].rsplit("/", 1)[0]
                os.makedirs(os.path.join(self.gcs_root, relative), exist_ok=True)
        return json.dumps(job).encode()

    def _after_job(self, job, headers):
        extract = job.get("configuration", {}).get("extract")
        if extract and self.gcs_url:
            for uri in extract.get("destinationUris", []):
                bucket, _, name = uri.replace("*", "000000000000")[len("gs://") :].partition("/")
                path = os.path.join(self.gcs_root, bucket, name)
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        data = f.read()
                    os.remove(path)
                    requests.post(
                        f"{self.gcs_url}/upload/storage/v1/b/{bucket}/o",
                        params={"uploadType": "media", "name": name},
                        data=data,
                        timeout=30,
                    ).raise_for_status()
        query = job.get("configuration", {}).get("query") or {}
        dest = query.get("destinationTable")
        if not dest or job.get("configuration", {}).get("dryRun"):
            return
        name = f"`{dest['projectId']}.{dest['datasetId']}.{dest['tableId']}`"
        sql = f"CREATE OR REPLACE TABLE {name} AS {query['query']}"
        project = dest["projectId"]
        r = self._call(
            "POST",
            f"/bigquery/v2/projects/{project}/queries",
            json.dumps({"query": sql, "useLegacySql": False, "timeoutMs": 60000}).encode(),
            {"Content-Type": "application/json"},
        )
        r.raise_for_status()

    def _filter_datasets(self, content, wanted, headers):
        labels = dict(term.split(":", 1) for term in wanted.split() if term.startswith("labels."))
        if not labels:
            return content
        listing = json.loads(content)
        kept = []
        for entry in listing.get("datasets", []):
            have = entry.get("labels")
            if have is None:
                ref = entry["datasetReference"]
                got = self._call(
                    "GET", f"/bigquery/v2/projects/{ref['projectId']}/datasets/{ref['datasetId']}"
                )
                have = got.json().get("labels", {}) if got.ok else {}
            if all(have.get(k[len("labels.") :]) == v for k, v in labels.items()):
                kept.append(entry)
        listing["datasets"] = kept
        return json.dumps(listing).encode()
