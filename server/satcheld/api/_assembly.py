"""Every method the server serves, in one table, each behind the guard: the
Satchel services, whose handlers ask the authorizer; health and reflection,
open to every principal (`OPEN_TO_ALL`); and Health/Check, the one method left
unguarded, so that probes with any certificate of the client CA are answered."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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
from ._certificates import CertificateAuthority
from ._crud import Crud
from ._guard import Guard
from ._health import HealthService
from ._methods import MethodTable, Wrap
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


# Methods every authenticated principal may call, with the verb and resource
# their audit records name. Health/Check is not among them: it is unguarded.
OPEN_TO_ALL: dict[str, tuple[str, str]] = {
    f"/{health.SERVICE_NAME}/Watch": ("watch", "health"),
    f"/{health.SERVICE_NAME}/List": ("list", "health"),
    f"/{reflection.SERVICE_NAME}/ServerReflectionInfo": ("get", "reflection"),
    f"/{_reflection.V1_SERVICE}/ServerReflectionInfo": ("get", "reflection"),
}
PROBE = f"/{health.SERVICE_NAME}/Check"


def _open_to_all(guard: Guard) -> Wrap:
    """The guard for health and reflection. A method not in OPEN_TO_ALL fails
    the server's start (KeyError) rather than being served unguarded."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method == PROBE:
            return handler
        return guard.wrap(method, handler, allow_all=OPEN_TO_ALL[method])

    return wrap


def method_table(
    crud: Crud, guard: Guard, health_service: HealthService, authority: CertificateAuthority
) -> MethodTable:
    methods = MethodTable(unknown=lambda method: guard.wrap(method, unknown_method(method)))
    guarded = methods.registrar(guard.wrap)
    service_account_pb2_grpc.add_ServiceAccountServiceServicer_to_server(
        ServiceAccountService(crud, authority), guarded
    )
    secret_pb2_grpc.add_SecretServiceServicer_to_server(SecretService(crud), guarded)
    workload_pb2_grpc.add_WorkloadServiceServicer_to_server(WorkloadService(crud), guarded)
    token_pb2_grpc.add_TokenServiceServicer_to_server(TokenService(crud), guarded)
    authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(AuthorizationService(crud.authorizer), guarded)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(crud), guarded)
    open_to_all = methods.registrar(_open_to_all(guard))
    health_pb2_grpc.add_HealthServicer_to_server(health_service, open_to_all)
    _reflection.enable(open_to_all, (*SERVICE_NAMES, health.SERVICE_NAME))
    return methods
