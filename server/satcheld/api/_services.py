"""The gRPC servicers: each RPC is a line or two that hands its request to
`Crud` or to the room that does its work."""

from __future__ import annotations

import grpc

from satchel.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    service_account_pb2,
    service_account_pb2_grpc,
    token_pb2,
    token_pb2_grpc,
    workload_pb2,
    workload_pb2_grpc,
)

from ..auth import RESOURCES, VERBS, Authorizer
from ..errors import InvalidArgument, Unauthenticated, Unimplemented
from ..model import SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Violations, shown
from . import _guard
from ._certificates import CertificateAuthority, issue_certificate
from ._crud import Crud


def unknown_method(method: str) -> grpc.RpcMethodHandler:
    """The answer to a method this server does not have, so that it is audited
    and carries an ErrorInfo like every other error. Request-streaming, and
    reading no request, it answers every shape of call at once."""

    async def answer(requests: object, context: object) -> None:
        raise Unimplemented(
            f"{shown(method)} is not a method of this server (reflection lists those it has)", reason="METHOD_NOT_FOUND"
        )

    return grpc.stream_unary_rpc_method_handler(answer)


class ServiceAccountService(service_account_pb2_grpc.ServiceAccountServiceServicer):
    def __init__(self, crud: Crud, authority: CertificateAuthority) -> None:
        self._r = crud
        self._authority = authority

    async def CreateServiceAccount(self, request, context):
        sa = await self._r.create(SERVICE_ACCOUNTS, request.service_account)
        return service_account_pb2.CreateServiceAccountResponse(service_account=sa)

    async def GetServiceAccount(self, request, context):
        return await self._r.get(SERVICE_ACCOUNTS, request.namespace, request.name)

    async def ListServiceAccounts(self, request, context):
        items, token, revision = await self._r.list(SERVICE_ACCOUNTS, request)
        return service_account_pb2.ListServiceAccountsResponse(
            service_accounts=items, next_page_token=token, revision=revision
        )

    async def UpdateServiceAccount(self, request, context):
        sa = await self._r.update(SERVICE_ACCOUNTS, request.service_account, request.update_mask)
        return service_account_pb2.UpdateServiceAccountResponse(service_account=sa)

    async def DeleteServiceAccount(self, request, context):
        await self._r.delete(SERVICE_ACCOUNTS, request.namespace, request.name, request.etag)
        return service_account_pb2.DeleteServiceAccountResponse()

    async def WatchServiceAccounts(self, request, context):
        return await self._r.watch(SERVICE_ACCOUNTS, request)

    async def IssueCertificate(self, request, context):
        return await issue_certificate(self._r, self._authority, request)


class SecretService(secret_pb2_grpc.SecretServiceServicer):
    def __init__(self, crud: Crud) -> None:
        self._r = crud

    async def CreateSecret(self, request, context):
        return secret_pb2.CreateSecretResponse(secret=await self._r.create(SECRETS, request.secret))

    async def GetSecret(self, request, context):
        return await self._r.get(SECRETS, request.namespace, request.name)

    async def ListSecrets(self, request, context):
        items, token, revision = await self._r.list(SECRETS, request)
        return secret_pb2.ListSecretsResponse(secrets=items, next_page_token=token, revision=revision)

    async def UpdateSecret(self, request, context):
        secret = await self._r.update(SECRETS, request.secret, request.update_mask)
        return secret_pb2.UpdateSecretResponse(secret=secret)

    async def DeleteSecret(self, request, context):
        await self._r.delete(SECRETS, request.namespace, request.name, request.etag)
        return secret_pb2.DeleteSecretResponse()

    async def RotateSecret(self, request, context):
        grace = request.grace_period if request.HasField("grace_period") else None
        secret = await self._r.rotate(request.namespace, request.name, request.data, grace)
        return secret_pb2.RotateSecretResponse(secret=secret)

    async def WatchSecrets(self, request, context):
        return await self._r.watch(SECRETS, request)


class WorkloadService(workload_pb2_grpc.WorkloadServiceServicer):
    def __init__(self, crud: Crud) -> None:
        self._r = crud

    async def CreateWorkload(self, request, context):
        return workload_pb2.CreateWorkloadResponse(workload=await self._r.create(WORKLOADS, request.workload))

    async def GetWorkload(self, request, context):
        return await self._r.get(WORKLOADS, request.namespace, request.name)

    async def ListWorkloads(self, request, context):
        items, token, revision = await self._r.list(WORKLOADS, request)
        return workload_pb2.ListWorkloadsResponse(workloads=items, next_page_token=token, revision=revision)

    async def UpdateWorkload(self, request, context):
        workload = await self._r.update(WORKLOADS, request.workload, request.update_mask)
        return workload_pb2.UpdateWorkloadResponse(workload=workload)

    async def DeleteWorkload(self, request, context):
        await self._r.delete(WORKLOADS, request.namespace, request.name, request.etag)
        return workload_pb2.DeleteWorkloadResponse()

    async def WatchWorkloads(self, request, context):
        return await self._r.watch(WORKLOADS, request)


class TokenService(token_pb2_grpc.TokenServiceServicer):
    """For peers: any authenticated principal may ask whether a token is valid
    (as Kubernetes' TokenReview lets the authenticators of peers ask) and fetch
    the keys that verify tokens offline; both are public facts about tokens
    the asker already holds. Audited like every call, with the answer."""

    def __init__(self, crud: Crud) -> None:
        self._tokens = crud.token_secrets.tokens
        self._authorizer = crud.authorizer

    async def ReviewToken(self, request, context):
        req = _guard.current()
        req.resource, req.verb, req.decision = "tokens", "review", "allow"
        if not request.token:
            raise InvalidArgument([("token", "is required")])
        audiences = list(dict.fromkeys(request.audiences)) or [self._tokens.audience]
        try:
            verified = self._tokens.verify(request.token)
        except Unauthenticated as e:
            req.reason = f"answered no: {e.message}"
            return token_pb2.ReviewTokenResponse(authenticated=False, reason=e.message)
        meant = [a for a in audiences if a in verified.audiences]
        if not meant:
            asked = shown(audiences[0]) if len(audiences) == 1 else f"any of the {len(audiences)} audiences asked for"
            why = f"the token is not meant for {asked}"
            req.reason = f"answered no: {why}"
            return token_pb2.ReviewTokenResponse(authenticated=False, reason=why)
        req.reason = f"answered yes: {verified.principal}"
        subjects = self._authorizer.policy.subjects_of(verified.principal)
        response = token_pb2.ReviewTokenResponse(
            authenticated=True,
            username=verified.username,
            uid=verified.uid,
            groups=sorted(s.removeprefix("group:") for s in subjects if s.startswith("group:")),
            audiences=meant,
        )
        response.expire_time.FromSeconds(verified.expire_time)
        return response

    async def GetPublicKeys(self, request, context):
        req = _guard.current()
        req.resource, req.verb, req.decision = "signing-keys", "get", "allow"
        req.reason = "open to every principal"
        return token_pb2.GetPublicKeysResponse(jwks_json=self._tokens.keys.jwks())


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """Key maintenance, for admins only."""

    def __init__(self, crud: Crud) -> None:
        self._r = crud

    async def ResealSecrets(self, request, context):
        self._r.authorize_admin("reseal")
        done = await self._r.store.reseal()
        keys = await self._r.store.reseal_signing_keys()  # the token signing keys are sealed too
        return admin_pb2.ResealSecretsResponse(resealed=done.resealed + keys, key_id=done.key_id)

    async def RotateSigningKey(self, request, context):
        self._r.authorize_admin("rotate-signing-key")
        kid = await self._r.token_secrets.tokens.keys.rotate()
        _guard.current().reason = f"new signing key {kid}"
        return admin_pb2.RotateSigningKeyResponse(key_id=kid)


class AuthorizationService(authorization_pb2_grpc.AuthorizationServiceServicer):
    """Answers for the caller itself (like Kubernetes' SelfSubjectAccessReview):
    any authenticated principal may ask, so the call is never PERMISSION_DENIED."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def CheckAccess(self, request, context):
        req = _guard.current()
        req.decision = "allow"  # asking about oneself needs only authentication
        verb, resource, namespace, name = request.verb, request.resource, request.namespace, request.name
        bad = Violations()
        if verb not in VERBS:
            bad.add("verb", f"{shown(verb)} is not one of {', '.join(VERBS)}")
        if resource not in RESOURCES:
            bad.add("resource", f"{shown(resource)} is not one of {', '.join(RESOURCES)}")
        bad.raise_if_any()
        req.resource = f"{resource}/{namespace}/{name}" if name else f"{resource}/{namespace or '*'}"
        req.verb = verb  # the verb asked about, for the caller itself
        why = self._authorizer.denial(_guard.principal(), verb, resource, namespace, name)
        req.reason = f"answered no: {why}" if why else f"answered yes: {verb}"
        return authorization_pb2.CheckAccessResponse(allowed=not why, reason=why)
