"""Checks a job makes before its graph is built, each failing with what to fix.

- the output folder is writable (a probe file is created and deleted there; BigQuery's checks
  are in ``bigquery_checks``);
- the model answers: one tiny request (an 8x8 image, ``max_tokens`` 1) through the job's own
  client, so a refused key, an unknown model or an unreachable ``--api_base`` stops the job at
  launch instead of failing every row on the workers; so does a TLS failure (unknown CA, wrong
  host name, expired certificate) or a proxy's refusal, in one line naming the host and cause.
  It costs one request; ``--skip_preflight`` turns it off.
(The input is checked by ``describe_setup.validate``: it must be listable Parquet with the
named columns.)
"""

from __future__ import annotations

import base64
import io
import uuid

from apache_beam.io.filesystems import FileSystems

from transforms.core import describe_config, request_builder
from transforms.core.api import client as vision_api
from transforms.core.api.retry import RetryPolicy
from transforms.core.api.session import new_session
from transforms.core.guards import secrets
from transforms.core.question import models


class PreflightError(RuntimeError):
    pass


def _probe_write(output: str) -> str | None:
    """None when a probe file could be written and deleted in ``output``, else why not. The
    error is returned as text, not raised: a traceback kept alive would keep a failed gs://
    writer alive too, and it retries its upload at process exit for minutes."""
    probe = FileSystems.join(output, f".vision-enrich-preflight-{uuid.uuid4().hex}")
    try:
        if "://" not in output:
            import os

            os.makedirs(output, exist_ok=True)
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"


def check_output_writable(output: str) -> None:
    problem = _probe_write(output)
    if problem is not None:
        hint = (
            "grant the job's service account roles/storage.objectAdmin on the bucket"
            if output.startswith("gs://")
            else "check the path and its permissions"
        )
        raise PreflightError(f"--output {output!r} is not writable ({problem}); {hint}") from None


def _tiny_png() -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def check_model_answers(
    api_base: str,
    chat: describe_config.ChatConfig,
    api_key_env: str | None,
    api_key_secret: str | None,
    timeout: float,
) -> vision_api.CallResult:
    """Send the one-image test request; its answer (a billed request: the summary counts its
    usage in the job's cost) or PreflightError saying what to fix."""
    try:
        key = secrets.api_key(api_key_env, api_key_secret)
    except secrets.ApiKeyError as exc:
        raise PreflightError(str(exc)) from None
    session = new_session(key, 1, vision_api.chat_completions_url(api_base))
    try:
        client = vision_api.VisionClient(
            session,
            api_base,
            timeout=timeout,
            secrets=(key,) if key else (),
            retry=RetryPolicy(max_retries=2, backoff_base=0.5, max_retry_after=10),
        )
        # a reasoning model counts its reasoning against the limit: one token would end it
        # before any text (finish_reason "length", no answer)
        reasoning = bool(models.spec_for(chat.model).reasoning_effort)
        probe = describe_config.ChatConfig(
            model=chat.model,
            prompt="Reply with one word.",
            max_tokens=256 if reasoning else 1,
            detail="low" if chat.detail == "low" else "auto",
            service_tier=chat.service_tier,
        )
        result = client.complete(request_builder.build_request(_tiny_png(), probe))
    finally:
        session.close()
    if result.ok:
        return result
    if result.error_type in ("tls", "proxy"):  # the message names the host, cause and fix
        raise PreflightError(f"cannot reach the API: {result.error}")
    fix = {
        401: f"the key was refused: check {api_key_secret or api_key_env}",
        403: "the key may not use this model, or its quota is exhausted",
        404: f"check --model {chat.model!r} and --api_base {api_base!r}",
        402: "the account has no credit left",
    }.get(result.http_status or 0, "check --api_base and --model")
    raise PreflightError(
        f"the model did not answer a one-image test request: {result.error} "
        f"-> {fix} (or skip this check with --skip_preflight)"
    )
