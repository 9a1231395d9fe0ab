"""Service-account tokens: ES256 JWTs that the server signs for token secrets
and verifies for bearer authentication and ReviewToken.

`SigningKeys` are the keys, kept by the store with their private halves sealed
like secret data; the one the store says signs, signs. `TokenIndex` is what a
token is checked against (each account's uid; each token secret's uid, version
and grace window), fed by the store's commit stream like the node graph.
`Tokens` signs, verifies, and keeps each verified token until it expires or
the account or token secret it names changes, whichever comes first: a call
with a known token costs a dictionary lookup, a new one one ES256 verify.

A token's claims: `iss`, `sub` (the account's username), `aud`, `iat`, `nbf`,
`exp`, `jti`, and under `satchel.dev` the namespace, the account (name, uid)
and its token secret (name, uid, version), which make revocation checkable:
deleting the account or the secret, or a rotation past its grace window,
revokes the token at once. The header names its key (`kid`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from satchel.v1 import meta_pb2, secret_pb2, service_account_pb2

from ..errors import Unauthenticated, Unavailable
from ..model import SECRETS, SERVICE_ACCOUNTS, Key, Resource, shown
from ..store import Change, SigningKey, Store, Transaction
from ._identity import SERVICE_ACCOUNT, Principal

log = logging.getLogger("satcheld.tokens")

ALGORITHM = "ES256"
CLAIMS = "satchel.dev"  # the private claims: namespace, serviceaccount, secret
TOKEN = secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN
DELETED = meta_pb2.EVENT_TYPE_DELETED
# A token this server signs is well under 1 KiB; anything far longer is not one
# of them, and is refused before it is parsed.
MAX_TOKEN_CHARS = 8192
# Verified tokens kept; there are about as many live tokens as token secrets.
MAX_CACHED = 65_536

Name = tuple[str, str]  # namespace, name


def username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- signing keys ---------------------------------------------------------------------


@dataclass(slots=True)
class _Key:
    kid: str
    private: ec.EllipticCurvePrivateKey | None  # None: the key ring cannot open it; it only verifies
    public: ec.EllipticCurvePublicKey
    jwk: dict[str, str]
    lifetime_ns: int
    expire_ns: int | None  # when its last token expires; None while it may sign


def _public_jwk(public: ec.EllipticCurvePublicKey) -> tuple[str, dict[str, str]]:
    """The key's id (its RFC 7638 thumbprint) and its JWK."""
    numbers = public.public_numbers()
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    kid = _b64(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())
    return kid, {**members, "kid": kid, "use": "sig", "alg": ALGORITHM}


class SigningKeys:
    """The token signing keys in memory: every key the store keeps, and a new
    one from before its write (so that it verifies its first token at once)."""

    def __init__(self, store: Store, lifetime: timedelta) -> None:
        self._store = store
        self.lifetime_ns = int(lifetime.total_seconds()) * 1_000_000_000
        self._keys: dict[str, _Key] = {}

    async def load(self) -> None:
        """Reads the keys; makes one on first start, and a new one when tokens
        are to live longer than the one that signs was made for (its retirement
        is then reckoned with the lifetime it signed with)."""
        keys = await self._store.signing_keys()
        self._merge(keys)
        signing = [k for k in keys if k.retire_time_ns is None]
        if not signing or signing[-1].lifetime_ns < self.lifetime_ns or signing[-1].private_key is None:
            kid = await self.rotate()
            log.info("made token signing key %s", kid)

    def _merge(self, keys: Iterable[SigningKey]) -> None:
        for k in keys:
            known = self._keys.get(k.kid)
            if known is not None:
                known.expire_ns = k.expire_time_ns if known.expire_ns is None else known.expire_ns
                continue
            jwk = json.loads(k.public_jwk)
            private = None
            if k.private_key is not None:
                loaded = serialization.load_der_private_key(k.private_key, password=None)
                assert isinstance(loaded, ec.EllipticCurvePrivateKey)
                private = loaded
            public = jwt.PyJWK(jwk).key
            assert isinstance(public, ec.EllipticCurvePublicKey)
            self._keys[k.kid] = _Key(k.kid, private, public, jwk, k.lifetime_ns, k.expire_time_ns)

    async def rotate(self) -> str:
        """Makes a new key that signs from now on; the one that signed keeps
        verifying until its last token expires. Returns the new key's id."""
        private = ec.generate_private_key(ec.SECP256R1())
        kid, jwk = _public_jwk(private.public_key())
        der = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Known before it is stored: the first token it signs may reach a caller
        # before this coroutine resumes.
        self._keys[kid] = _Key(kid, private, private.public_key(), jwk, self.lifetime_ns, None)
        try:
            keys = await self._store.add_signing_key(kid, der, json.dumps(jwk, separators=(",", ":")), self.lifetime_ns)
        except Exception:  # not stored (a cancelled caller's write may still be: the key stays)
            self._keys.pop(kid, None)
            raise
        self._merge(keys)
        return kid

    async def prune(self, now_ns: int | None = None) -> tuple[str, ...]:
        """Deletes the retired keys whose last token has expired."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        kids = await self._store.delete_signing_keys(now_ns)
        for kid in kids:
            self._keys.pop(kid, None)
            log.info("deleted token signing key %s: the last token it signed has expired", kid)
        return kids

    def for_signing(self, txn: Transaction) -> _Key:
        """The key that signs as of `txn` (in the writer thread)."""
        kid = txn.signing_key_id()
        key = self._keys.get(kid) if kid is not None else None
        if key is None or key.private is None:
            raise Unavailable("no token signing key is loaded; tokens cannot be made")
        return key

    def for_verifying(self, kid: str) -> _Key | None:
        """The key `kid`, until it is deleted (a token it signed has expired by
        then, and is refused as expired, which says more than an unknown key)."""
        return self._keys.get(kid)

    def jwks(self, now_ns: int | None = None) -> str:
        """The JSON Web Key Set of every key that may have signed a live token."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        keys = [k.jwk for k in self._keys.values() if k.expire_ns is None or k.expire_ns > now_ns]
        return json.dumps({"keys": keys}, separators=(",", ":"))


# -- what tokens are checked against --------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenSecretState:
    uid: str
    account: str
    version: int
    previous_expire_ns: int  # until then version - 1 stays valid; 0: never


class TokenIndex:
    """Each account's uid and each token secret's state, moved through every
    commit; `apply` returns the keys of the objects whose state changed."""

    def __init__(self) -> None:
        self.accounts: dict[Name, str] = {}
        self.secrets: dict[Name, TokenSecretState] = {}

    async def load(self, store: Store) -> None:
        _, accounts = await store.snapshot(SERVICE_ACCOUNTS, lambda _obj: True, False)
        _, tokens = await store.snapshot(SECRETS, _is_token_secret, False)
        self.apply([Change(0, SERVICE_ACCOUNTS, meta_pb2.EVENT_TYPE_ADDED, obj, None) for obj in accounts])
        self.apply([Change(0, SECRETS, meta_pb2.EVENT_TYPE_ADDED, obj, None) for obj in tokens])

    def apply(self, changes: Iterable[Change]) -> set[Key]:
        changed: set[Key] = set()
        for change in changes:
            obj = change.obj
            name = (obj.metadata.namespace, obj.metadata.name)
            if change.kind == SERVICE_ACCOUNTS:
                if change.type == DELETED:
                    self.accounts.pop(name, None)
                else:
                    self.accounts[name] = obj.metadata.uid
            elif change.kind == SECRETS and _is_token_secret(obj):
                assert isinstance(obj, secret_pb2.Secret)
                if change.type == DELETED:
                    self.secrets.pop(name, None)
                else:
                    grace = obj.previous_version_expire_time
                    expire_ns = grace.ToNanoseconds() if obj.HasField("previous_version_expire_time") else 0
                    self.secrets[name] = TokenSecretState(obj.metadata.uid, obj.service_account, obj.version, expire_ns)
            else:
                continue
            changed.add((change.kind, *name))
        return changed


def _is_token_secret(obj: Resource) -> bool:
    return isinstance(obj, secret_pb2.Secret) and obj.type == TOKEN


# -- signing and verifying --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid token says: whose it is, for whom, until when."""

    principal: Principal
    username: str
    uid: str  # the account's
    audiences: tuple[str, ...]
    expire_time: int  # `exp`, seconds since the epoch
    until: float  # valid until: `exp`, or the end of its version's grace window if sooner
    objects: tuple[Key, Key]  # the account and the token secret it names


def _refused(message: str, reason: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


class Tokens:
    """Signs tokens for token secrets and verifies them; `apply` is the commit
    stream's feed (the cache forgets the tokens of whatever changed)."""

    def __init__(self, store: Store, *, issuer: str, audience: str, lifetime: timedelta) -> None:
        if lifetime.total_seconds() < 1:
            raise ValueError("tokens must live at least 1s")
        self.issuer = issuer
        self.audience = audience
        self.lifetime = int(lifetime.total_seconds())
        self.keys = SigningKeys(store, lifetime)
        self.index = TokenIndex()
        self._store = store
        self._cache: dict[str, Verified] = {}
        self._by_object: dict[Key, set[str]] = {}

    async def start(self) -> None:
        """Loads the keys (making the first) and the index, then follows commits."""
        await self.keys.load()
        await self.index.load(self._store)
        self._store.add_listener(self.apply)

    def apply(self, changes: list[Change]) -> None:
        for key in self.index.apply(changes):
            for token in self._by_object.pop(key, ()):
                self._forget(token)

    # -- signing (in write functions, in the store's writer thread) ---------------

    def sign(self, txn: Transaction, account: service_account_pb2.ServiceAccount, secret: secret_pb2.Secret) -> str:
        """A token for `account` from its token secret `secret`, as of
        `secret.version` (both with their uids set): for a new token secret, and
        for RotateSecret's next version."""
        key = self.keys.for_signing(txn)
        assert key.private is not None
        ns, name = account.metadata.namespace, account.metadata.name
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": username(ns, name),
            "aud": [self.audience],
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": secrets.token_urlsafe(16),
            CLAIMS: {
                "namespace": ns,
                "serviceaccount": {"name": name, "uid": account.metadata.uid},
                "secret": {"name": secret.metadata.name, "uid": secret.metadata.uid, "version": secret.version},
            },
        }
        return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})

    # -- verifying (on the event loop) ----------------------------------------------

    def authenticate(self, token: str) -> Principal:
        """The service account a bearer token makes its caller; Unauthenticated,
        saying why, if it does not. The token must be meant for this server."""
        verified = self.verify(token)
        if self.audience not in verified.audiences:
            raise _refused(
                f"the token is not meant for this server (audience {shown(self.audience)})", "TOKEN_AUDIENCE"
            )
        return verified.principal

    def verify(self, token: str) -> Verified:
        """What a token says, if it is valid now (its audience aside);
        Unauthenticated with why not. Never echoes the token."""
        hit = self._cache.get(token)
        if hit is not None:
            if time.time() < hit.until:
                return hit
            self._forget(token)
        verified = self._verify(token)
        if len(self._cache) >= MAX_CACHED:
            self._forget(next(iter(self._cache)))
        self._cache[token] = verified
        for key in verified.objects:
            self._by_object.setdefault(key, set()).add(token)
        return verified

    def _forget(self, token: str) -> None:
        verified = self._cache.pop(token, None)
        if verified is None:
            return
        for key in verified.objects:
            tokens = self._by_object.get(key)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._by_object[key]

    def _verify(self, token: str) -> Verified:
        if len(token) > MAX_TOKEN_CHARS:
            raise _refused(
                f"the token is longer than {MAX_TOKEN_CHARS} characters: not one of this server's", "TOKEN_MALFORMED"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _refused("the bearer token is not a well-formed JWT", "TOKEN_MALFORMED") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise _refused(
                f"the token's algorithm is {shown(str(alg))}; only {ALGORITHM} is accepted", "TOKEN_ALGORITHM"
            )
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _refused("the token names no signing key (kid)", "TOKEN_UNKNOWN_KEY")
        key = self.keys.for_verifying(kid)
        if key is None:
            raise _refused(
                f"the token's signing key {shown(kid)} is not one of this server's (or was retired and deleted)",
                "TOKEN_UNKNOWN_KEY",
            )
        try:
            payload = jwt.api_jws.decode(token, key.public, algorithms=[ALGORITHM])
        except jwt.InvalidSignatureError:
            raise _refused(
                f"the token's signature does not verify with its key {shown(kid)}", "TOKEN_SIGNATURE"
            ) from None
        except jwt.InvalidTokenError:
            raise _refused("the bearer token is not a well-formed JWT", "TOKEN_MALFORMED") from None
        return self._check(payload, time.time_ns())

    def _check(self, payload: bytes, now_ns: int) -> Verified:
        """The claims of a token whose signature verified."""
        malformed = _refused("the token's claims are not those of a service-account token", "TOKEN_MALFORMED")
        try:
            claims = json.loads(payload)
            own = claims[CLAIMS]
            ns, account, secret = own["namespace"], own["serviceaccount"], own["secret"]
            name, uid = account["name"], account["uid"]
            secret_name, secret_uid, version = secret["name"], secret["uid"], secret["version"]
            iss, sub, aud, jti = claims["iss"], claims["sub"], claims["aud"], claims["jti"]
            iat, nbf, exp = claims["iat"], claims["nbf"], claims["exp"]
        except (ValueError, KeyError, TypeError):
            raise malformed from None
        audiences = (aud,) if isinstance(aud, str) else aud
        if not (
            all(isinstance(v, str) for v in (ns, name, uid, secret_name, secret_uid, iss, sub, jti))
            and all(isinstance(v, int) and not isinstance(v, bool) for v in (version, iat, nbf, exp))
            and isinstance(audiences, list | tuple)
            and all(isinstance(a, str) for a in audiences)
            and sub == username(ns, name)
        ):
            raise malformed
        if iss != self.issuer:
            raise _refused(f"the token was issued by {shown(iss)}, not {shown(self.issuer)}", "TOKEN_ISSUER")
        now = now_ns / 1e9
        if now >= exp:
            raise _refused(f"the token expired at {_time(exp)}", "TOKEN_EXPIRED")
        if now < nbf:
            raise _refused(f"the token is not valid before {_time(nbf)}", "TOKEN_NOT_YET_VALID")
        if now < iat:
            raise _refused(f"the token was issued in the future, at {_time(iat)}", "TOKEN_NOT_YET_VALID")
        index = self.index
        current_uid = index.accounts.get((ns, name))
        if current_uid is None:
            raise _refused(f"the token's service account {ns}/{name} no longer exists", "TOKEN_REVOKED")
        if current_uid != uid:
            raise _refused(
                f"the token's service account {ns}/{name} was deleted (the account of that name now is another)",
                "TOKEN_REVOKED",
            )
        state = index.secrets.get((ns, secret_name))
        if state is None or state.uid != secret_uid or state.account != name:
            raise _refused(f"the token's secret {ns}/{secret_name} was deleted", "TOKEN_REVOKED")
        until = float(exp)
        if version != state.version:
            # Only the version before the current one, and only in its grace window.
            if version != state.version - 1 or now_ns >= state.previous_expire_ns:
                if version == state.version - 1 and state.previous_expire_ns:
                    why = f"its grace window ended at {_time(state.previous_expire_ns / 1e9)}"
                elif version == state.version - 1:
                    why = "it was given no grace window"
                else:
                    why = "only the current version and, for a while after a rotation, the one before it are valid"
                raise _refused(
                    f"the token is of version {version} of secret {ns}/{secret_name}, now at version"
                    f" {state.version}: {why}",
                    "TOKEN_REVOKED",
                )
            until = min(until, state.previous_expire_ns / 1e9)
        return Verified(
            Principal(SERVICE_ACCOUNT, name, ns),
            sub,
            uid,
            tuple(audiences),
            exp,
            until,
            ((SERVICE_ACCOUNTS, ns, name), (SECRETS, ns, secret_name)),
        )
