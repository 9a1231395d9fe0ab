"""The standard grpc.health.v1 service."""

from __future__ import annotations

from grpc import aio
from grpc_health.v1 import health, health_pb2


class HealthService(health.aio.HealthServicer):
    """grpcio-health-checking's aio servicer leaves List to the generated base
    class, which raises (an UNKNOWN status); this one answers it."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        statuses = self._server_status.items()  # the base class's table, which Check reads too
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses}
        )
