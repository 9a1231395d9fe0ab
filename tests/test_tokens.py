"""Service-account tokens: the token secret each account gets (and loses) in
the same commit as the account's own change; bearer tokens that make the caller
that account, refused with a reason for every way a token can be wrong; the
ReviewToken answer; the JWKS that verifies tokens offline with PyJWT alone;
signing-key rotation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta

import grpc
import jwt
import pytest
from conftest import db_bytes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from failures import failure
from kinds import SECRETS, SERVICE_ACCOUNTS, WORKLOADS
from watchkit import ADDED, DELETED, MODIFIED, SYNCED, WAIT, Channels, Event, Watcher, running

from satchel.v1 import admin_pb2, admin_pb2_grpc, secret_pb2, service_account_pb2, token_pb2
from satcheld.api import AuditLog
from satcheld.store import KeyRing

Code = grpc.StatusCode
TOKEN = secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN
CLAIMS = "satchel.dev"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def token_secret(stubs, account: str, namespace: str = "default") -> secret_pb2.Secret:
    response = await stubs.secrets.GetSecret(secret_pb2.GetSecretRequest(namespace=namespace, name=f"{account}-token"))
    return response.secret


async def token_of(stubs, account: str, namespace: str = "default") -> str:
    return (await token_secret(stubs, account, namespace)).data["token"].decode()


async def create_account(stubs, name: str, namespace: str = "default") -> service_account_pb2.ServiceAccount:
    return await SERVICE_ACCOUNTS.api(stubs).create(SERVICE_ACCOUNTS.make(name, namespace=namespace))


async def get_itself(stubs, token: str, name: str = "app", namespace: str = "default"):
    """What a service account may always do: get itself."""
    request = service_account_pb2.GetServiceAccountRequest(namespace=namespace, name=name)
    return await stubs.accounts.GetServiceAccount(request, metadata=bearer(token))


async def review(stubs, token: str, *audiences: str) -> token_pb2.ReviewTokenResponse:
    return await stubs.tokens.ReviewToken(token_pb2.ReviewTokenRequest(token=token, audiences=audiences))


def unverified(token: str) -> tuple[dict, dict]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def server_key(server, token: str) -> ec.EllipticCurvePrivateKey:
    """The server's private key that signed `token`, to make tokens it would not."""
    key = server.tokens.keys.for_verifying(jwt.get_unverified_header(token)["kid"])
    return key.private


async def refused(stubs, token: str, reason: str) -> str:
    """A call with `token` is UNAUTHENTICATED for `reason`, and ReviewToken says
    it is not valid; neither echoes the token. Returns the message."""
    f = await failure(get_itself(stubs, token), Code.UNAUTHENTICATED)
    assert f.info.reason == reason, f.message
    assert token not in f.message
    for part in token.split("."):
        assert len(part) < 8 or part not in f.message
    answer = await review(stubs, token)
    assert not answer.authenticated and answer.reason and not answer.username
    if reason != "TOKEN_AUDIENCE":  # ReviewToken's own audiences are the request's
        assert answer.reason == f.message
    return f.message


def records(server) -> list[dict]:
    return [json.loads(line) for line in server.config.audit_log.read_text().splitlines()]


# -- the token secret's lifecycle ------------------------------------------------------------


async def test_an_account_is_created_with_its_token_secret_in_one_commit(server, admin, pki) -> None:
    secrets = Watcher.open(admin, SECRETS, "secrets", send_initial=True)
    accounts = Watcher.open(admin, SERVICE_ACCOUNTS, "accounts", send_initial=True)
    try:
        await secrets.take(1)
        await accounts.take(1)
        account = await SERVICE_ACCOUNTS.api(admin).create(
            SERVICE_ACCOUNTS.make("app", secrets=[service_account_pb2.SecretReference(name="db")])
        )
        revision = account.metadata.resource_version
        assert [ref.name for ref in account.secrets] == ["db", "app-token"]

        secret = await token_secret(admin, "app")
        assert secret.metadata.resource_version == revision
        assert (secret.type, secret.service_account, secret.version) == (TOKEN, "app", 1)
        assert sorted(secret.data) == ["ca.crt", "namespace", "token"]
        assert [(k.name, k.size) for k in secret.data_keys] == sorted((k, len(v)) for k, v in secret.data.items())
        assert secret.data["ca.crt"] == pki.ca.read_bytes()
        assert secret.data["namespace"] == b"default"

        header, claims = unverified(secret.data["token"].decode())
        assert (header["alg"], header["typ"]) == ("ES256", "JWT") and header["kid"]
        assert claims["iss"] == "satchel" and claims["aud"] == ["satchel"]
        assert claims["sub"] == "system:serviceaccount:default:app"
        assert claims["iat"] == claims["nbf"] and claims["exp"] - claims["iat"] == 24 * 3600
        assert abs(claims["iat"] - time.time()) < 60 and claims["jti"]
        assert claims[CLAIMS] == {
            "namespace": "default",
            "serviceaccount": {"name": "app", "uid": account.metadata.uid},
            "secret": {"name": "app-token", "uid": secret.metadata.uid, "version": 1},
        }

        await secrets.wait_for(lambda: len(secrets.events) >= 2, "the token secret")
        await accounts.wait_for(lambda: len(accounts.events) >= 2, "the account")
        assert secrets.events[1].bare() == Event(ADDED, revision, "default/app-token")
        assert accounts.events[1].bare() == Event(ADDED, revision, "default/app")
    finally:
        await secrets.close()
        await accounts.close()


async def test_an_account_has_at_most_one_token_secret(admin) -> None:
    await create_account(admin, "app")
    second = SECRETS.make("app-token-2", type=TOKEN, service_account="app", data={})
    f = await failure(SECRETS.api(admin).create(second), Code.FAILED_PRECONDITION)
    assert f.info.reason == "TOKEN_SECRET_EXISTS"
    assert "default/app-token" in f.message
    await failure(SECRETS.api(admin).get("app-token-2"), Code.NOT_FOUND)


async def test_a_token_secret_for_an_account_without_one_is_filled_in_and_listed(admin) -> None:
    account = await create_account(admin, "app")
    old = await token_of(admin, "app")
    await get_itself(admin, old)  # valid, and now cached
    await SECRETS.api(admin).delete("app-token")
    await failure(get_itself(admin, old), Code.UNAUTHENTICATED)

    created = await SECRETS.api(admin).create(
        SECRETS.make("app-credentials", type=TOKEN, service_account="app", data={})
    )
    assert sorted(created.data) == ["ca.crt", "namespace", "token"] and created.version == 1
    listed = await SERVICE_ACCOUNTS.api(admin).get("app")
    assert [ref.name for ref in listed.secrets] == ["app-credentials"]
    assert listed.metadata.resource_version == created.metadata.resource_version
    new = (await admin.secrets.GetSecret(secret_pb2.GetSecretRequest(name="app-credentials"))).secret
    token = new.data["token"].decode()
    assert (await get_itself(admin, token)).service_account.metadata.uid == account.metadata.uid
    # The deleted secret's token stays revoked: it names that secret's uid, not this one's.
    message = await refused(admin, old, "TOKEN_REVOKED")
    assert "default/app-token was deleted" in message


async def test_a_token_secret_needs_its_account_and_no_data(admin) -> None:
    orphan = SECRETS.make("orphan", type=TOKEN, service_account="nobody", data={})
    f = await failure(SECRETS.api(admin).create(orphan), Code.FAILED_PRECONDITION)
    assert f.info.reason == "SERVICE_ACCOUNT_NOT_FOUND"
    await create_account(admin, "app")
    await SECRETS.api(admin).delete("app-token")
    f = await failure(
        SECRETS.api(admin).create(SECRETS.make("mine", type=TOKEN, service_account="app")), Code.INVALID_ARGUMENT
    )
    assert f.fields == ["secret.data"]
    # Token data is the server's: an update may not set it.
    await SECRETS.api(admin).create(SECRETS.make("again", type=TOKEN, service_account="app", data={}))
    f = await failure(
        SECRETS.api(admin).update(SECRETS.make("again", data={"token": b"x"}), ["data"]), Code.INVALID_ARGUMENT
    )
    assert f.fields == ["secret.data"]


async def test_deleting_an_account_deletes_its_token_secret_in_the_same_commit(admin) -> None:
    await create_account(admin, "app")
    await create_account(admin, "other")
    token = await token_of(admin, "app")
    await get_itself(admin, token)
    secrets = Watcher.open(admin, SECRETS, "secrets", send_initial=True)
    accounts = Watcher.open(admin, SERVICE_ACCOUNTS, "accounts", send_initial=True)
    try:
        await secrets.wait_for(lambda: any(e.type == SYNCED for e in secrets.events), "SYNCED")
        await accounts.wait_for(lambda: any(e.type == SYNCED for e in accounts.events), "SYNCED")
        await SERVICE_ACCOUNTS.api(admin).delete("app")
        await failure(SECRETS.api(admin).get("app-token"), Code.NOT_FOUND)
        assert (await token_secret(admin, "other")).service_account == "other"  # only its own
        await secrets.wait_for(lambda: secrets.events[-1].type == DELETED, "the token secret's DELETED")
        await accounts.wait_for(lambda: accounts.events[-1].type == DELETED, "the account's DELETED")
        assert secrets.events[-1].key == "default/app-token" and accounts.events[-1].key == "default/app"
        assert secrets.events[-1].revision == accounts.events[-1].revision
    finally:
        await secrets.close()
        await accounts.close()
    message = await refused(admin, token, "TOKEN_REVOKED")
    assert message == "the token's service account default/app no longer exists"
    # An account made again with the same name is another account: the old token stays revoked.
    await create_account(admin, "app")
    assert "was deleted" in await refused(admin, token, "TOKEN_REVOKED")


async def test_deleting_the_token_secret_takes_it_off_the_account_and_revokes_its_tokens(admin) -> None:
    await SERVICE_ACCOUNTS.api(admin).create(
        SERVICE_ACCOUNTS.make("app", secrets=[service_account_pb2.SecretReference(name="db")])
    )
    token = await token_of(admin, "app")
    await get_itself(admin, token)  # valid, and cached
    accounts = Watcher.open(admin, SERVICE_ACCOUNTS, "accounts", send_initial=True)
    try:
        await accounts.wait_for(lambda: any(e.type == SYNCED for e in accounts.events), "SYNCED")
        await SECRETS.api(admin).delete("app-token")
        account = await SERVICE_ACCOUNTS.api(admin).get("app")
        assert [ref.name for ref in account.secrets] == ["db"]
        await accounts.wait_for(lambda: accounts.events[-1].type == MODIFIED, "the account's MODIFIED")
        assert accounts.events[-1].revision == account.metadata.resource_version
    finally:
        await accounts.close()
    assert await refused(admin, token, "TOKEN_REVOKED") == "the token's secret default/app-token was deleted"


async def test_an_update_of_the_accounts_secrets_keeps_its_token_secret(admin) -> None:
    await create_account(admin, "app")
    api = SERVICE_ACCOUNTS.api(admin)
    refs = [service_account_pb2.SecretReference(name=n) for n in ("db", "cache")]
    updated = await api.update(SERVICE_ACCOUNTS.make("app", secrets=refs), ["secrets"])
    assert [ref.name for ref in updated.secrets] == ["db", "cache", "app-token"]
    unchanged = await api.update(SERVICE_ACCOUNTS.make("app", secrets=refs), ["secrets"])
    assert unchanged.metadata.resource_version == updated.metadata.resource_version


async def test_a_workload_without_an_account_gets_default_and_its_token_secret_in_one_commit(
    admin, connect, pki
) -> None:
    node = connect(pki.node)  # n1
    view = Watcher.open(node, SECRETS, "node-secrets", send_initial=True)
    try:
        await view.wait_for(lambda: any(e.type == SYNCED for e in view.events), "SYNCED")
        workload = await WORKLOADS.api(admin).create(WORKLOADS.make("w", namespace="fresh", node_name="n1"))
        revision = workload.metadata.resource_version
        account = await SERVICE_ACCOUNTS.api(admin).get("default", "fresh")
        secret = await token_secret(admin, "default", "fresh")
        assert account.metadata.resource_version == secret.metadata.resource_version == revision
        assert [ref.name for ref in account.secrets] == ["default-token"]
        assert secret.data["namespace"] == b"fresh"
        # The node the workload runs on sees the token secret, with its data.
        await view.wait_for(lambda: view.events[-1].key == "fresh/default-token", "the token secret")
        assert view.events[-1].bare() == Event(ADDED, revision, "fresh/default-token")
        assert dict(view.objects[-1].data) == dict(secret.data)
        token = secret.data["token"].decode()
        assert (await get_itself(admin, token, "default", "fresh")).service_account.metadata.name == "default"
    finally:
        await view.close()


async def test_an_accounts_token_secret_name_must_be_free_and_valid(admin) -> None:
    await SECRETS.api(admin).create(SECRETS.make("app-token"))  # an opaque secret of that name
    f = await failure(create_account(admin, "app"), Code.FAILED_PRECONDITION)
    assert f.info.reason == "TOKEN_SECRET_NAME_TAKEN"
    await failure(SERVICE_ACCOUNTS.api(admin).get("app"), Code.NOT_FOUND)
    f = await failure(create_account(admin, "a" * 248), Code.INVALID_ARGUMENT)
    assert f.fields == ["service_account.metadata.name"]
    assert (await create_account(admin, "a" * 247)).metadata.name == "a" * 247


# -- bearer authentication -------------------------------------------------------------------


async def test_a_bearer_token_makes_the_caller_its_service_account(server, admin, connect, pki) -> None:
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    got = await get_itself(admin, token)
    assert got.service_account.metadata.name == "app"
    # Over an admin's connection, the token's account is the caller: no more an admin.
    f = await failure(
        admin.secrets.ListSecrets(secret_pb2.ListSecretsRequest(), metadata=bearer(token)), Code.PERMISSION_DENIED
    )
    assert f.message.startswith("sa:default/app may not list secrets")
    # Any connection that authenticates by itself will do: a node's, a user's.
    for identity in (pki.node, pki.alice):
        assert (await get_itself(connect(identity), token)).service_account.metadata.name == "app"
    # One whose certificate names nobody will not.
    f = await failure(get_itself(connect(pki.no_spiffe), token), Code.UNAUTHENTICATED)
    assert f.info.reason == "NO_SPIFFE_ID"

    log = server.config.audit_log.read_text()
    assert token not in log
    key = KeyRing.load(server.config.encryption_key_file).derive("audit-token-hmac")
    digest = AuditLog(None, hmac_key=key).token_digest(token)
    by_token = [r for r in records(server) if r["token"] == digest]
    assert [r["principal"] for r in by_token] == ["sa:default/app"] * 4 + [""]
    assert by_token[1]["decision"] == "deny"


async def test_a_token_once_verified_costs_no_second_verification(admin, monkeypatch) -> None:
    from satcheld.auth import _tokens

    await create_account(admin, "app")
    token = await token_of(admin, "app")
    calls = []
    decode = _tokens.jwt.api_jws.decode
    monkeypatch.setattr(_tokens.jwt.api_jws, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    for _ in range(5):
        await get_itself(admin, token)
    await review(admin, token)
    assert len(calls) == 1


async def test_an_expired_token_is_refused(server, admin) -> None:
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    _, claims = unverified(token)
    now = int(time.time())
    claims.update(iat=now - 100, nbf=now - 100, exp=now - 10)
    expired = jwt.encode(claims, server_key(server, token), "ES256", headers={"kid": unverified(token)[0]["kid"]})
    assert (await refused(admin, expired, "TOKEN_EXPIRED")).startswith("the token expired at ")


async def test_a_token_not_yet_valid_is_refused(server, admin) -> None:
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    header, claims = unverified(token)
    claims.update(nbf=int(time.time()) + 600)
    early = jwt.encode(claims, server_key(server, token), "ES256", headers={"kid": header["kid"]})
    assert (await refused(admin, early, "TOKEN_NOT_YET_VALID")).startswith("the token is not valid before ")


async def test_a_token_for_another_audience_is_refused(server, admin) -> None:
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    header, claims = unverified(token)
    claims.update(aud=["payments"])
    other = jwt.encode(claims, server_key(server, token), "ES256", headers={"kid": header["kid"]})
    message = await refused(admin, other, "TOKEN_AUDIENCE")
    assert message == 'the token is not meant for this server (audience "satchel")'
    # ReviewToken answers for the audiences asked about.
    assert (await review(admin, other, "payments")).authenticated
    assert (await review(admin, token, "payments")).reason == 'the token is not meant for "payments"'


async def test_a_token_of_another_issuer_is_refused(server, admin) -> None:
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    header, claims = unverified(token)
    claims.update(iss="someone-else")
    other = jwt.encode(claims, server_key(server, token), "ES256", headers={"kid": header["kid"]})
    await refused(admin, other, "TOKEN_ISSUER")


async def test_a_token_with_a_wrong_signature_is_refused(admin) -> None:
    await create_account(admin, "app")
    await create_account(admin, "other")
    token = await token_of(admin, "app")
    header, claims = unverified(token)
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": header["kid"]})
    await refused(admin, forged, "TOKEN_SIGNATURE")
    # A signature of this server's key over other claims: the claims of another account.
    claims.update(sub="system:serviceaccount:default:other")
    head, _, signature = token.split(".")
    tampered = f"{head}.{b64(json.dumps(claims).encode())}.{signature}"
    await refused(admin, tampered, "TOKEN_SIGNATURE")
    assert (await get_itself(admin, token)).service_account.metadata.name == "app"


async def test_a_token_of_an_unknown_key_is_refused(admin) -> None:
    await create_account(admin, "app")
    _, claims = unverified(await token_of(admin, "app"))
    other = ec.generate_private_key(ec.SECP256R1())
    for kid in ("not-a-key-of-ours", None):
        headers = {"kid": kid} if kid else {}
        await refused(admin, jwt.encode(claims, other, "ES256", headers=headers), "TOKEN_UNKNOWN_KEY")


async def test_alg_none_is_refused(admin) -> None:
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    head, payload, _ = token.split(".")
    header = jwt.get_unverified_header(token)
    for alg in ("none", "None"):
        unsigned = f"{b64(json.dumps({**header, 'alg': alg}).encode())}.{payload}."
        assert 'algorithm is "' in await refused(admin, unsigned, "TOKEN_ALGORITHM")
    await refused(admin, f"{head}.{payload}.", "TOKEN_SIGNATURE")  # ES256 with no signature


async def test_hs256_signed_with_the_public_key_is_refused(admin) -> None:
    """The algorithm-confusion attack: a verifier that takes the token's `alg`
    would check an HMAC keyed with the public key, which anyone has."""
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    header, claims = unverified(token)
    jwks = json.loads((await admin.tokens.GetPublicKeys(token_pb2.GetPublicKeysRequest())).jwks_json)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    public = jwt.PyJWK(jwk).key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, json.dumps(jwk).encode()):
        signing_input = f"{b64(json.dumps({**header, 'alg': 'HS256'}).encode())}.{b64(json.dumps(claims).encode())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await refused(admin, f"{signing_input}.{b64(mac)}", "TOKEN_ALGORITHM")


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "a.b", "e30", "." * 3, "x" * 7_000])
async def test_what_is_no_jwt_is_refused(admin, garbage: str) -> None:
    await refused(admin, garbage, "TOKEN_MALFORMED")


async def test_a_token_far_longer_than_the_servers_is_refused_unread(admin) -> None:
    answer = await review(admin, "x" * 100_000)
    assert not answer.authenticated and answer.reason.startswith("the token is longer than 8192 characters")


async def test_a_token_of_a_version_past_its_grace_window_is_refused(server, admin) -> None:
    """RotateSecret's rule, written here straight through the store: after a
    rotation the previous version's token stays valid until the secret's
    `previous_version_expire_time`, then it is revoked; older ones are not."""
    await create_account(admin, "app")
    v1 = await token_of(admin, "app")
    await get_itself(admin, v1)  # cached

    def rotate(grace_seconds: float, bump: bool):
        def write(txn):
            secret = txn.get("secrets", "default", "app-token")
            if bump:
                secret.version += 1
            secret.previous_version_expire_time.FromNanoseconds(int((time.time() + grace_seconds) * 1e9))
            return txn.put(secret)

        return server._store.write(write)

    await rotate(3600, bump=True)  # version 2; version 1 in its grace window
    assert (await get_itself(admin, v1)).service_account.metadata.name == "app"
    assert (await review(admin, v1)).authenticated
    await rotate(-1, bump=False)  # the grace window is over
    message = await refused(admin, v1, "TOKEN_REVOKED")
    assert message.startswith("the token is of version 1 of secret default/app-token, now at version 2: its grace")
    await rotate(3600, bump=True)  # version 3: version 2 in its grace window, never version 1
    assert "only the current version" in await refused(admin, v1, "TOKEN_REVOKED")


async def test_a_token_in_its_grace_window_is_refused_once_the_window_ends(pki, tmp_path) -> None:
    """A cached token is kept only until the earlier of its expiry and its grace window's end."""
    channels = Channels(pki)
    async with running(pki, tmp_path / "data") as server:
        try:
            admin = channels.stubs(server.address, pki.admin)
            await create_account(admin, "app")
            v1 = await token_of(admin, "app")

            def rotate(txn):
                secret = txn.get("secrets", "default", "app-token")
                secret.version += 1
                secret.previous_version_expire_time.FromNanoseconds(time.time_ns() + 1_500_000_000)
                return txn.put(secret)

            await server._store.write(rotate)
            await get_itself(admin, v1)  # valid, and cached
            deadline = time.monotonic() + WAIT
            while (await review(admin, v1)).authenticated:
                assert time.monotonic() < deadline, "the grace window never ended"
                await asyncio.sleep(0.1)
            await refused(admin, v1, "TOKEN_REVOKED")
        finally:
            await channels.close()


# -- ReviewToken and the JWKS ---------------------------------------------------------------


async def test_review_token_says_whose_a_token_is_to_any_principal(server, admin, connect, pki) -> None:
    account = await create_account(admin, "app", "prod")
    token = await token_of(admin, "app", "prod")
    _, claims = unverified(token)
    for stubs in (admin, connect(pki.alice), connect(pki.node)):
        answer = await review(stubs, token)
        assert answer.authenticated and answer.reason == ""
        assert answer.username == "system:serviceaccount:prod:app"
        assert answer.uid == account.metadata.uid
        assert list(answer.groups) == ["system:authenticated", "system:serviceaccounts", "system:serviceaccounts:prod"]
        assert list(answer.audiences) == ["satchel"]
        assert answer.expire_time.seconds == claims["exp"]
    assert list((await review(admin, token, "peer", "satchel", "satchel")).audiences) == ["satchel"]
    # A service account asks about itself with its own token.
    assert (
        await admin.tokens.ReviewToken(token_pb2.ReviewTokenRequest(token=token), metadata=bearer(token))
    ).authenticated
    f = await failure(admin.tokens.ReviewToken(token_pb2.ReviewTokenRequest()), Code.INVALID_ARGUMENT)
    assert f.fields == ["token"]

    reviews = [r for r in records(server) if r["method"].endswith("/ReviewToken")]
    assert {(r["verb"], r["resource"], r["decision"]) for r in reviews} == {("review", "tokens", "allow")}
    assert reviews[0]["reason"] == "answered yes: sa:prod/app"
    assert token not in server.config.audit_log.read_text()


async def test_the_jwks_verifies_tokens_with_pyjwt_alone(admin, connect, pki) -> None:
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    response = await connect(pki.alice).tokens.GetPublicKeys(token_pb2.GetPublicKeysRequest())
    # Offline from here: the JWKS and PyJWT, nothing of Satchel's.
    jwks = jwt.PyJWKSet.from_json(response.jwks_json)
    key = jwks[jwt.get_unverified_header(token)["kid"]]
    assert (key.key_type, key.algorithm_name) == ("EC", "ES256")
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="satchel", issuer="satchel")
    assert claims["sub"] == "system:serviceaccount:default:app"
    for k in json.loads(response.jwks_json)["keys"]:
        assert set(k) == {"kty", "crv", "x", "y", "kid", "use", "alg"}  # public parts only
    with pytest.raises(jwt.InvalidSignatureError):
        forged = jwt.encode(
            jwt.decode(token, options={"verify_signature": False}), ec.generate_private_key(ec.SECP256R1()), "ES256"
        )
        jwt.decode(forged, key.key, algorithms=["ES256"], audience="satchel")


# -- signing keys ---------------------------------------------------------------------------


async def test_signing_keys_are_made_on_first_start_sealed_and_kept(pki, tmp_path) -> None:
    data = tmp_path / "data"
    channels = Channels(pki)
    try:
        async with running(pki, data) as server:
            admin = channels.stubs(server.address, pki.admin)
            await create_account(admin, "app")
            token = await token_of(admin, "app")
            (key,) = await server._store.signing_keys()
            private = server_key(server, token)
            der = private.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            assert key.private_key == der
        await channels.close()
        stored = db_bytes(data / "satchel.db")
        assert der not in stored and private.private_numbers().private_value.to_bytes(32, "big") not in stored
        async with running(pki, data) as server:
            admin = channels.stubs(server.address, pki.admin)
            assert (await get_itself(admin, token)).service_account.metadata.name == "app"
            assert [k.kid for k in await server._store.signing_keys()] == [key.kid]  # none made on a restart
        # Tokens that live longer than the key was made for: a new key, the old one retired.
        async with running(pki, data, token_lifetime=timedelta(hours=48)) as server:
            admin = channels.stubs(server.address, pki.admin)
            old, new = await server._store.signing_keys()
            assert old.kid == key.kid and old.retire_time_ns and new.retire_time_ns is None
            assert old.expire_time_ns == old.retire_time_ns + 24 * 3600 * 10**9
            assert (await get_itself(admin, token)).service_account.metadata.name == "app"
    finally:
        await channels.close()


async def test_a_signing_key_the_key_ring_cannot_open_still_verifies_and_a_new_one_signs(pki, tmp_path) -> None:
    """A database started with another key file: the old key's private half is
    lost, its public half (kept in the clear) still verifies its tokens."""
    data = tmp_path / "data"
    channels = Channels(pki)
    try:
        async with running(pki, data) as server:
            await create_account(channels.stubs(server.address, pki.admin), "app")
            token = await token_of(channels.stubs(server.address, pki.admin), "app")
        (data / "encryption.key").unlink()
        KeyRing.create_file(data / "encryption.key")
        async with running(pki, data) as server:
            admin = channels.stubs(server.address, pki.admin)
            assert (await get_itself(admin, token)).service_account.metadata.name == "app"
            old, new = await server._store.signing_keys()
            assert old.private_key is None and old.retire_time_ns and new.retire_time_ns is None
            await create_account(admin, "fresh")
            fresh = await token_of(admin, "fresh")
            assert jwt.get_unverified_header(fresh)["kid"] == new.kid
            assert (await get_itself(admin, fresh, "fresh")).service_account.metadata.name == "fresh"
    finally:
        await channels.close()


async def test_rotate_signing_key_is_for_admins_only(admin, connect, pki) -> None:
    for identity in (pki.alice, pki.node):
        stub = admin_pb2_grpc.AdminServiceStub(connect(identity).channel)
        await failure(stub.RotateSigningKey(admin_pb2.RotateSigningKeyRequest()), Code.PERMISSION_DENIED)
    await create_account(admin, "app")
    token = await token_of(admin, "app")
    stub = admin_pb2_grpc.AdminServiceStub(admin.channel)
    await failure(
        stub.RotateSigningKey(admin_pb2.RotateSigningKeyRequest(), metadata=bearer(token)), Code.PERMISSION_DENIED
    )


async def test_a_rotated_key_verifies_its_tokens_until_they_expire_then_leaves_the_jwks(pki, tmp_path) -> None:
    channels = Channels(pki)
    async with running(pki, tmp_path / "data", token_lifetime=timedelta(seconds=3)) as server:
        try:
            admin = channels.stubs(server.address, pki.admin)

            async def kids() -> list[str]:
                jwks = (await admin.tokens.GetPublicKeys(token_pb2.GetPublicKeysRequest())).jwks_json
                return [k["kid"] for k in json.loads(jwks)["keys"]]

            await create_account(admin, "old")
            old = await token_of(admin, "old")
            first = jwt.get_unverified_header(old)["kid"]
            assert await kids() == [first]

            rotated = await admin_pb2_grpc.AdminServiceStub(admin.channel).RotateSigningKey(
                admin_pb2.RotateSigningKeyRequest()
            )
            second = rotated.key_id
            assert second != first and await kids() == [first, second]
            await create_account(admin, "new")
            new = await token_of(admin, "new")
            assert jwt.get_unverified_header(new)["kid"] == second
            # The retired key still verifies what it signed.
            assert (await get_itself(admin, old, "old")).service_account.metadata.name == "old"

            deadline = time.monotonic() + WAIT
            while first in await kids():
                assert time.monotonic() < deadline, "the retired key stayed in the JWKS"
                await asyncio.sleep(0.1)
            assert (await review(admin, old)).reason.startswith("the token expired at ")  # its last token: expired
            assert await kids() == [second]
            while first in [k.kid for k in await server._store.signing_keys()]:
                assert time.monotonic() < deadline, "the retired key was never deleted"
                await asyncio.sleep(0.1)
            f = await failure(get_itself(admin, old, "old"), Code.UNAUTHENTICATED)
            assert f.info.reason in ("TOKEN_UNKNOWN_KEY", "TOKEN_EXPIRED")
        finally:
            await channels.close()
