"""An Envoy rate-limit service on loopback: the real gRPC method
(``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``, Beam's own protobuf messages)
over a token bucket per descriptor set, recording every request it was asked about."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from apache_beam.io.components import rate_limit_pb2

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


class EnvoyRls:
    def __init__(self, per_second: float):
        self.per_second = per_second
        self.calls: list[tuple[str, list[dict[str, str]], int]] = []
        self.allowed = 0
        self._tokens = 1.0
        self._at = time.monotonic()
        self._lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.ratelimit.v3.RateLimitService",
            {
                "ShouldRateLimit": grpc.unary_unary_rpc_method_handler(
                    self._should,
                    request_deserializer=rate_limit_pb2.RateLimitRequest.FromString,
                    response_serializer=rate_limit_pb2.RateLimitResponse.SerializeToString,
                )
            },
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def _should(self, request, context):
        descriptors = [{e.key: e.value for e in d.entries} for d in request.descriptors]
        hits = request.hits_addend or 1
        with self._lock:
            self.calls.append((request.domain, descriptors, hits))
            now = time.monotonic()
            self._tokens = min(1.0, self._tokens + (now - self._at) * self.per_second)
            self._at = now
            if self._tokens >= hits:
                self._tokens -= hits
                self.allowed += 1
                return rate_limit_pb2.RateLimitResponse(
                    overall_code=rate_limit_pb2.RateLimitResponse.OK
                )
            wait = (hits - self._tokens) / self.per_second
        status = rate_limit_pb2.RateLimitResponse.DescriptorStatus(
            code=rate_limit_pb2.RateLimitResponse.OVER_LIMIT
        )
        status.duration_until_reset.FromNanoseconds(int(wait * 1e9))
        return rate_limit_pb2.RateLimitResponse(
            overall_code=rate_limit_pb2.RateLimitResponse.OVER_LIMIT, statuses=[status]
        )

    def __enter__(self) -> EnvoyRls:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(grace=None)
