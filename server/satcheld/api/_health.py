"""The standard grpc.health.v1 service. Check answers any verified client
certificate, unaudited (load balancer probes); Watch and List go through the
guard like every other method (see `_assembly.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio
from grpc_health.v1 import health, health_pb2


class HealthService(health.aio.HealthServicer):
    """grpcio-health-checking's aio servicer leaves List to the generated base
    class, which raises (an UNKNOWN status); this one answers it. Its Watch
    sends with `context.write` and never returns; this one is an async generator,
    as every stream behind the guard is."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        statuses = self._server_status.items()  # the base class's table, which Check reads too
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses}
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status of `request.service` now and at each change (intermediate
        ones may be skipped: only the latest counts), on the base class's
        conditions, which its `set` notifies. The condition is not held while a
        response is sent, so that a watcher that does not read holds up no `set`."""
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        last = None
        try:
            while True:
                async with condition:
                    status = self._server_status.get(service, unknown)
                    while status == last:
                        await condition.wait()
                        status = self._server_status.get(service, unknown)
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
        finally:
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]
