"""Identity edge cases beyond test_auth.py and test_malformed.py (which cover a NUL
byte or a control character in the URI SAN, two different URI SANs, a SPIFFE ID
beside an `https://` URI, an empty `authorization`, one beside an empty one, a
non-Bearer one and `authorization-bin`):

- a URI SAN that is almost a SPIFFE ID of the trust domain names nobody: another
  case, a port, user info, a query, a fragment, percent-encoding, dot segments, an
  extra or missing segment, an unknown kind, a bad name or namespace, DEL, the
  same SPIFFE ID twice; every RPC shape (unary, Watch, CheckAccess) refuses it;
- two `authorization` values (both well-formed), a bare `Bearer`, a lowercase
  `bearer`, on a Watch and on CheckAccess too: UNAUTHENTICATED, and an admin's
  certificate beside them never makes the call run as the admin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from conftest import Stubs, mint
from cryptography import x509
from failures import failure
from kinds import SECRETS
from watchkit import WAIT

from satchel.v1 import authorization_pb2, authorization_pb2_grpc, secret_pb2

Code = grpc.StatusCode
TD = "spiffe://satchel.local"

NOT_A_PRINCIPAL = {
    "trust-domain-upper-case": "spiffe://SATCHEL.LOCAL/user/admin",
    "scheme-upper-case": "SPIFFE://satchel.local/user/admin",
    "trust-domain-with-port": "spiffe://satchel.local:443/user/admin",
    "trust-domain-with-user-info": "spiffe://admin@satchel.local/user/admin",
    "trust-domain-as-prefix": "spiffe://satchel.local.evil.example/user/admin",
    "query": f"{TD}/user/admin?as=admin",
    "fragment": f"{TD}/user/admin#admin",
    "percent-encoded-name": f"{TD}/user/%61dmin",
    "dot-segments": f"{TD}/user/../user/admin",
    "double-slash": f"{TD}//user/admin",
    "trailing-slash": f"{TD}/user/admin/",
    "extra-segment": f"{TD}/user/admin/extra",
    "empty-name": f"{TD}/user/",
    "no-path": TD,
    "unknown-kind": f"{TD}/group/admin",
    "upper-case-name": f"{TD}/user/Admin",
    "del-character": f"{TD}/user/ad\x7fmin",
    "space-in-name": f"{TD}/user/ad min",
    "sa-bad-namespace": f"{TD}/ns/Prod/sa/web",
    "sa-empty-name": f"{TD}/ns/prod/sa/",
    "sa-extra-segment": f"{TD}/ns/prod/sa/web/x",
    "sa-wrong-word": f"{TD}/ns/prod/user/admin",
    "sa-dot-namespace": f"{TD}/ns/../sa/admin",
}


def _calls(stubs: Stubs) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each shape: unary, server-streaming, and the CheckAccess self-review."""
    access = authorization_pb2_grpc.AuthorizationServiceStub(stubs.channel)

    async def watch() -> None:
        call = stubs.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(send_initial=True))
        try:
            await asyncio.wait_for(call.read(), WAIT)
        finally:
            call.cancel()

    return {
        "ListSecrets": lambda: SECRETS.api(stubs).list(),
        "WatchSecrets": watch,
        "CheckAccess": lambda: access.CheckAccess(authorization_pb2.CheckAccessRequest(verb="get", resource="secrets")),
    }


@pytest.mark.parametrize("case", NOT_A_PRINCIPAL)
async def test_a_uri_san_that_is_almost_a_spiffe_id_names_nobody(connect, pki, case: str) -> None:
    identity = mint(pki.dir, f"almost-{case}", "admin", [x509.UniformResourceIdentifier(NOT_A_PRINCIPAL[case])])
    stubs = connect(identity)
    for what, call in _calls(stubs).items():
        try:
            f = await failure(call(), Code.UNAUTHENTICATED)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
        assert f.info.reason == "NO_SPIFFE_ID", what


async def test_the_same_spiffe_id_twice_is_refused(connect, pki) -> None:
    """An X509-SVID carries exactly one URI SAN: a repeated one is not "one"."""
    admin_id = x509.UniformResourceIdentifier(f"{TD}/user/admin")
    stubs = connect(mint(pki.dir, "twice", "admin", [admin_id, admin_id]))
    for call in _calls(stubs).values():
        f = await failure(call(), Code.UNAUTHENTICATED)
        assert f.info.reason == "NO_SPIFFE_ID"


async def test_well_formed_ids_of_each_kind_are_who_they_say(connect, pki) -> None:
    """The control for the cases above: the same certificates, well formed, authenticate
    as exactly the principal their SPIFFE ID names (as CheckAccess's reason says)."""
    for uri, principal in (
        (f"{TD}/user/ad-min.x", "user:ad-min.x"),
        (f"{TD}/node/n1.rack-2", "node:n1.rack-2"),
        (f"{TD}/ns/prod/sa/web", "sa:prod/web"),
    ):
        stubs = connect(
            mint(
                pki.dir,
                f"ok-{principal.replace(':', '-').replace('/', '-')}",
                "admin",
                [x509.UniformResourceIdentifier(uri)],
            )
        )
        access = authorization_pb2_grpc.AuthorizationServiceStub(stubs.channel)
        answer = await access.CheckAccess(authorization_pb2.CheckAccessRequest(verb="delete", resource="secrets"))
        assert (answer.allowed, answer.reason) == (False, f"{principal} may not delete secrets")


BAD_AUTHORIZATION = {
    "two-bearer-values": (("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")),
    "the-same-value-twice": (("authorization", "Bearer a.b.c"), ("authorization", "Bearer a.b.c")),
    "bare-bearer": (("authorization", "Bearer"),),
    "lowercase-bearer": (("authorization", "bearer a.b.c"),),
    "token-without-scheme": (("authorization", "a.b.c"),),
    "bearer-and-binary": (("authorization", "Bearer a.b.c"), ("authorization-bin", b"\x01")),
}


@pytest.mark.parametrize("case", BAD_AUTHORIZATION)
async def test_bad_authorization_metadata_never_runs_as_the_certificate(admin, case: str) -> None:
    """The admin's certificate beside a bad `authorization`: every call shape is
    UNAUTHENTICATED, and a write it asked for did not happen."""
    metadata = BAD_AUTHORIZATION[case]
    access = authorization_pb2_grpc.AuthorizationServiceStub(admin.channel)

    async def watch() -> None:
        call = admin.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(send_initial=True), metadata=metadata)
        try:
            await asyncio.wait_for(call.read(), WAIT)
        finally:
            call.cancel()

    calls = {
        "CreateSecret": lambda: SECRETS.api(admin).create(SECRETS.make("sneaky"), metadata=metadata),
        "WatchSecrets": watch,
        "CheckAccess": lambda: access.CheckAccess(
            authorization_pb2.CheckAccessRequest(verb="get", resource="secrets"), metadata=metadata
        ),
    }
    for what, call in calls.items():
        try:
            await failure(call(), Code.UNAUTHENTICATED)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
    listed = await SECRETS.api(admin).list()
    assert not listed.secrets, "a call with a bad authorization wrote as the admin"
