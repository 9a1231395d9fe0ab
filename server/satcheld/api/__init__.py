"""The gRPC API: the method table every call goes through, the guard around every
method but Health/Check (request id, authentication, the one error map, audit),
the services and the CRUD they share, the token controller, the CA that
IssueCertificate signs with, health and reflection. Uses auth, watch and store;
nothing below imports it."""

from ._assembly import SERVICE_NAMES, method_table
from ._certificates import CertificateAuthority
from ._crud import Crud
from ._guard import AuditLog, Guard
from ._health import HealthService
from ._methods import MethodTable
from ._paging import PageTokens
from ._rotator import Rotator
from ._token_secrets import TokenSecrets

__all__ = [
    "SERVICE_NAMES",
    "AuditLog",
    "CertificateAuthority",
    "Crud",
    "Guard",
    "HealthService",
    "MethodTable",
    "PageTokens",
    "Rotator",
    "TokenSecrets",
    "method_table",
]
