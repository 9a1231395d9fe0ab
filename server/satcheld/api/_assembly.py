"""Every method the server serves, in one table: the Satchel services behind the
guard, health and reflection beside them."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2_grpc

from satchel.kinds import ALL
from satchel.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
    secret_pb2_grpc,
    service_account_pb2_grpc,
    token_pb2,
    token_pb2_grpc,
    workload_pb2_grpc,
)

from . import _reflection
from ._crud import Crud
from ._guard import Guard
from ._health import HealthService
from ._methods import MethodTable
from ._services import (
    AdminService,
    AuthorizationService,
    SecretService,
    ServiceAccountService,
    TokenService,
    WorkloadService,
    unknown_method,
)

SERVICE_NAMES = (
    *(kind.service for kind in ALL),
    token_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
    authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def method_table(crud: Crud, guard: Guard, health_service: HealthService) -> MethodTable:
    methods = MethodTable(unknown=lambda method: guard.wrap(method, unknown_method(method)))
    guarded = methods.registrar(guard.wrap)
    service_account_pb2_grpc.add_ServiceAccountServiceServicer_to_server(ServiceAccountService(crud), guarded)
    secret_pb2_grpc.add_SecretServiceServicer_to_server(SecretService(crud), guarded)
    workload_pb2_grpc.add_WorkloadServiceServicer_to_server(WorkloadService(crud), guarded)
    token_pb2_grpc.add_TokenServiceServicer_to_server(TokenService(), guarded)
    authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(AuthorizationService(crud.authorizer), guarded)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(crud), guarded)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, methods.registrar())
    _reflection.enable(methods.registrar(), (*SERVICE_NAMES, health.SERVICE_NAME))
    return methods
