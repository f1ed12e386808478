"""The per-worker parts both drivers are made of, made in one place. No Beam import.

``worker_parts`` reads the key (``--api_key_env`` or Secret Manager) and registers it with the
redaction every row and log line of the process passes through, then makes the API session
(which carries the key), the guarded session images are fetched on (which never does), the
request builder (what is asked), the image loader and the ``--max_images`` / ``--max_cost``
budget. The online worker (``online.worker.Worker``) and the batch shard (``batch.shard``) each
add what only they need: flow control and a client, or a sender and a manifest.
"""

from __future__ import annotations

import dataclasses

import requests

from transforms.core import ledger
from transforms.core.api.session import new_session
from transforms.core.describe_config import DescribeConfig, image_options
from transforms.core.guards import netguard, sanitize, secrets
from transforms.core.images.loader import ImageLoader
from transforms.core.question.models import ModelSpec
from transforms.core.request_builder import RequestBuilder


@dataclasses.dataclass
class WorkerParts:
    key: str | None  # the API key, never logged (registered for redaction)
    session: requests.Session  # the API's: carries the key
    image_session: requests.Session  # the images': guarded, never carries the key
    asker: RequestBuilder
    spec: ModelSpec
    loader: ImageLoader
    budget: ledger.Budget

    def close(self) -> None:
        self.session.close()
        self.image_session.close()


def worker_parts(cfg: DescribeConfig, pool_size: int, url: str) -> WorkerParts:
    """The parts for one worker: an API session of ``pool_size`` connections whose proxy and CA
    settings are read for ``url``, and the rest from ``cfg``."""
    key = secrets.api_key(cfg.api_key_env, cfg.api_key_secret)
    # from here on, no row, error or log line of this process can carry the key
    sanitize.register_secret(key)
    sanitize.install_log_redaction()
    # The API session carries the key; images are fetched on the loader's own guarded
    # session, so the key can never travel to an image host.
    session = new_session(key, pool_size, url)
    image_session = netguard.guarded_session(
        netguard.parse_networks(cfg.image.allowed_networks), cfg.max_concurrency
    )
    asker = RequestBuilder(cfg)  # what is asked, the same online and in batches
    loader = ImageLoader(image_options(cfg, asker.spec), http_session=image_session)
    return WorkerParts(
        key=key,
        session=session,
        image_session=image_session,
        asker=asker,
        spec=asker.spec,
        loader=loader,
        budget=ledger.Budget(cfg.max_images, cfg.max_cost),
    )
