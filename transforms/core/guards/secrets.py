"""Where the API key comes from: an environment variable or Secret Manager (no Beam import).

The key is looked up on the worker, in ``DoFn.setup()``, so it never travels in pipeline options
(which the Dataflow console shows) or in the pickled pipeline.
"""

from __future__ import annotations

import os
import re

from transforms.core.guards import sanitize

SECRET_VERSION = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")


class ApiKeyError(RuntimeError):
    """The key could not be had; the message says what to fix (never the key itself)."""


def check_secret_name(name: str) -> None:
    if not SECRET_VERSION.match(name or ""):
        raise ValueError(
            f"--api_key_secret {name!r} must look like projects/PROJECT/secrets/NAME/versions/"
            "VERSION (VERSION may be 'latest')"
        )


def read_secret(name: str) -> str:
    """The secret version's payload, stripped of surrounding whitespace."""
    check_secret_name(name)
    from google.api_core import exceptions as gexc
    from google.cloud import secretmanager

    try:
        response = secretmanager.SecretManagerServiceClient().access_secret_version(
            request={"name": name}
        )
    except gexc.PermissionDenied:
        raise ApiKeyError(
            f"permission denied reading {name}: grant the worker service account "
            "roles/secretmanager.secretAccessor on the secret"
        ) from None
    except gexc.NotFound:
        raise ApiKeyError(
            f"{name} does not exist (check the project, secret and version)"
        ) from None
    except gexc.GoogleAPICallError as exc:
        raise ApiKeyError(f"reading {name} failed: {exc.message}") from None
    return response.payload.data.decode("utf-8").strip()


def api_key(env: str | None, secret: str | None) -> str | None:
    """The key: from Secret Manager when ``secret`` is set, else from the variable ``env``.
    Whatever is read is registered for redaction (``guards.sanitize``) before it is returned."""
    if secret:
        value = read_secret(secret)
    elif env:
        value = os.environ.get(env)
        if not value:
            raise ApiKeyError(
                f"the environment variable {env} is not set on this worker; on "
                "Dataflow use --api_key_secret"
            )
        value = value.strip()
    else:
        return None
    sanitize.register_secret(value)
    return value
