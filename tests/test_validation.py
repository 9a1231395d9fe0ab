"""A battery of bad requests: each is INVALID_ARGUMENT with a BadRequest naming
every bad field, the server stays up, and nothing stored changes. No request,
however odd, gets INTERNAL or UNKNOWN."""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Callable

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from failures import failure
from google.protobuf import duration_pb2
from kinds import ALL, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind

from satchel.v1 import secret_pb2, service_account_pb2, workload_pb2

Code = grpc.StatusCode
T = secret_pb2.SecretType
MiB = 1024 * 1024


# -- real TLS material -------------------------------------------------------------


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _tls_pair(name: str = "svc.example") -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


CRT, KEY = _tls_pair()
OTHER_CRT, OTHER_KEY = _tls_pair("other.example")
ENCRYPTED_KEY = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"passphrase"),
)
GARBAGE_PEM_CERT = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
GARBAGE_PEM_KEY = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
# A throwaway key and self-signed certificate on secp112r1, a curve cryptography
# cannot load (made with `openssl ecparam -name secp112r1 -genkey`, `openssl req -x509`).
WEAK_CURVE_KEY = b"""-----BEGIN PRIVATE KEY-----
ME4CAQAwEAYHKoZIzj0CAQYFK4EEAAYENzA1AgEBBA7LRaeJKy9UYIr/SZvzIaEg
Ax4ABF7w5ZUrHRozFU8JwQmpDlweg1yMiF1VwkWg4AE=
-----END PRIVATE KEY-----
"""
WEAK_CURVE_CRT = b"""-----BEGIN CERTIFICATE-----
MIIBNzCCAQOgAwIBAgIUeUXQRUwlWJb3NORMg2clnYlMxIgwCQYHKoZIzj0EATAX
MRUwEwYDVQQDDAx3ZWFrLmV4YW1wbGUwIBcNMjYxMTI2MjMzNTIwWhgPMjEyNjEx
MDIyMzM1MjBaMBcxFTATBgNVBAMMDHdlYWsuZXhhbXBsZTAyMBAGByqGSM49AgEG
BSuBBAAGAx4ABF7w5ZUrHRozFU8JwQmpDlweg1yMiF1VwkWg4AGjUzBRMB0GA1Ud
DgQWBBS6piPSJEDefBziYcYEqZdFQM1JiDAfBgNVHSMEGDAWgBS6piPSJEDefBzi
YcYEqZdFQM1JiDAPBgNVHRMBAf8EBTADAQH/MAkGByqGSM49BAEDIwAwIAIODDHR
cnSqMYMO3uo4PhQCDmSATQuW4xTD1VSqSgW7
-----END CERTIFICATE-----
"""


# -- what must not change ----------------------------------------------------------------


@pytest.fixture
async def unchanged(admin) -> Callable[[], Awaitable[None]]:
    """Creates one object of each kind; the returned check asserts that the
    server still answers and that nothing stored has changed (same revision)."""
    await SERVICE_ACCOUNTS.api(admin).create(SERVICE_ACCOUNTS.make("keep", labels={"a": "b"}))
    await SECRETS.api(admin).create(SECRETS.make("keep", type=T.SECRET_TYPE_TLS, data={"tls.crt": CRT, "tls.key": KEY}))
    await WORKLOADS.api(admin).create(WORKLOADS.make("keep", secrets=["keep"]))

    async def everything() -> list:
        return [await kind.api(admin).list() for kind in ALL]

    before = await everything()

    async def check() -> None:
        assert await everything() == before, "a rejected request changed what is stored"

    return check


def _rejected_fields(expected: set[str], fields: list[str]) -> None:
    assert set(fields) == expected, f"BadRequest names {fields}, expected {sorted(expected)}"


# -- names, namespaces, labels, annotations: every kind ----------------------------------------

BAD_NAMES = {
    "uppercase": "Upper",
    "unicode": "caf\u00e9",
    "empty": "",
    "254-chars": "a" * 254,
    "leading-dash": "-web",
    "trailing-dash": "web-",
    "double-dot": "a..b",
    "underscore": "a_b",
    "slash": "a/b",
    "space": "a b",
    "newline": "web\n",
}
BAD_NAMESPACES = {
    "uppercase": "Prod",
    "unicode": "pr\u00f6d",
    "dot": "a.b",
    "64-chars": "n" * 64,
    "leading-dash": "-prod",
    "underscore": "a_b",
}
BAD_LABELS = {
    "key-leading-dash": {"-x": "v"},
    "key-64-chars": {"k" * 64: "v"},
    "key-unicode": {"k\u00e9y": "v"},
    "key-empty": {"": "v"},
    "key-two-slashes": {"a/b/c": "v"},
    "key-empty-prefix": {"/x": "v"},
    "key-empty-name": {"example.com/": "v"},
    "key-uppercase-prefix": {"Example.com/x": "v"},
    "value-64-chars": {"k": "v" * 64},
    "value-space": {"k": "a b"},
    "value-unicode": {"k": "\u00e9"},
    "value-leading-dash": {"k": "-v"},
}


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
async def test_bad_name(admin, unchanged, kind: Kind, name: str) -> None:
    f = await failure(kind.api(admin).create(kind.make(name)), Code.INVALID_ARGUMENT)
    _rejected_fields({f"{kind.field}.metadata.name"}, f.fields)
    f = await failure(kind.api(admin).get(name), Code.INVALID_ARGUMENT)
    _rejected_fields({"name"}, f.fields)
    f = await failure(kind.api(admin).delete(name), Code.INVALID_ARGUMENT)
    _rejected_fields({"name"}, f.fields)
    f = await failure(kind.api(admin).update(kind.make(name, labels={"a": "b"})), Code.INVALID_ARGUMENT)
    _rejected_fields({f"{kind.field}.metadata.name"}, f.fields)
    await unchanged()


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
@pytest.mark.parametrize("namespace", BAD_NAMESPACES.values(), ids=BAD_NAMESPACES.keys())
async def test_bad_namespace(admin, unchanged, kind: Kind, namespace: str) -> None:
    api = kind.api(admin)
    f = await failure(api.create(kind.make("ok", namespace=namespace)), Code.INVALID_ARGUMENT)
    _rejected_fields({f"{kind.field}.metadata.namespace"}, f.fields)
    for call in (api.get("ok", namespace), api.delete("ok", namespace), api.list(namespace=namespace)):
        f = await failure(call, Code.INVALID_ARGUMENT)
        _rejected_fields({"namespace"}, f.fields)
    await unchanged()


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
@pytest.mark.parametrize("labels", BAD_LABELS.values(), ids=BAD_LABELS.keys())
async def test_bad_labels(admin, unchanged, kind: Kind, labels: dict[str, str]) -> None:
    api = kind.api(admin)
    f = await failure(api.create(kind.make("labelled", labels=labels)), Code.INVALID_ARGUMENT)
    _rejected_fields({f"{kind.field}.metadata.labels"}, f.fields)
    f = await failure(api.update(kind.make("keep", labels=labels), ["metadata.labels"]), Code.INVALID_ARGUMENT)
    _rejected_fields({f"{kind.field}.metadata.labels"}, f.fields)
    await unchanged()


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
async def test_bad_annotations(admin, unchanged, kind: Kind) -> None:
    api = kind.api(admin)
    oversized = {"a": "x" * (128 * 1024), "b": "y" * (128 * 1024)}
    for bad in (oversized, {"bad key": "v"}, {"-x": "v"}):
        f = await failure(api.create(kind.make("noted", annotations=bad)), Code.INVALID_ARGUMENT)
        _rejected_fields({f"{kind.field}.metadata.annotations"}, f.fields)
        f = await failure(
            api.update(kind.make("keep", annotations=bad), ["metadata.annotations"]), Code.INVALID_ARGUMENT
        )
        _rejected_fields({f"{kind.field}.metadata.annotations"}, f.fields)
    await unchanged()


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
async def test_limits_are_inclusive(admin, kind: Kind) -> None:
    """The edges of each rule are accepted, so the rejections above are about the rule."""
    api = kind.api(admin)
    # A service account's name leaves room for its token secret's, `<name>-token`.
    longest = ".".join(["a" * 63] * 4)[: 247 if kind is SERVICE_ACCOUNTS else 253]
    labels = {"example.com/" + "k" * 63: "v" * 63, "empty": "", "a-b_c.d": "x"}
    annotations = {"big": "x" * (256 * 1024 - 3)}
    created = await api.create(kind.make(longest, namespace="n" * 63, labels=labels, annotations=annotations))
    assert created.metadata.name == longest
    assert dict(created.metadata.labels) == labels


# -- secrets ------------------------------------------------------------------------------


BAD_DATA_KEYS = {
    "dot": ".",
    "dot-dot": "..",
    "dot-dot-prefix": "..x",
    "slash": "a/b",
    "unicode": "\u00e9",
    "254-chars": "k" * 254,
    "empty": "",
    "space": "a b",
    "nul": "a\x00b",
}


def _data_field(key: str) -> str:
    shown = key if len(key) <= 64 else key[:61] + "..."
    return f"secret.data[{json.dumps(shown)}]"


@pytest.mark.parametrize("key", BAD_DATA_KEYS.values(), ids=BAD_DATA_KEYS.keys())
async def test_bad_data_key(admin, unchanged, key: str) -> None:
    api = SECRETS.api(admin)
    f = await failure(api.create(SECRETS.make("keyed", data={key: b"v", "good": b"v"})), Code.INVALID_ARGUMENT)
    _rejected_fields({_data_field(key)}, f.fields)
    f = await failure(api.update(SECRETS.make("keep", data={key: b"v"}), ["data"]), Code.INVALID_ARGUMENT)
    assert _data_field(key) in f.fields
    await unchanged()


async def test_good_data_keys(admin) -> None:
    keys = {"a", ".hidden", "a..b", "tls.crt", "UPPER_lower-1.2", "k" * 253, "-"}
    created = await SECRETS.api(admin).create(SECRETS.make("keys", data={k: b"1" for k in keys}))
    assert {k.name for k in created.data_keys} == keys


async def test_secret_over_one_mebibyte(admin, unchanged) -> None:
    api = SECRETS.api(admin)
    for data in ({"big": b"x" * (MiB + 1)}, {"a": b"x" * (MiB // 2), "b": b"y" * (MiB // 2)}):
        f = await failure(api.create(SECRETS.make("huge", data=data)), Code.INVALID_ARGUMENT)
        _rejected_fields({"secret.data"}, f.fields)
        f = await failure(api.update(SECRETS.make("keep", data=data), ["data"]), Code.INVALID_ARGUMENT)
        _rejected_fields({"secret.data"}, f.fields)
    await unchanged()
    # Just under the limit is fine.
    created = await api.create(SECRETS.make("large", data={"big": b"x" * (MiB - 1024)}))
    assert [(k.name, k.size) for k in created.data_keys] == [("big", MiB - 1024)]


async def test_a_secret_too_large_as_a_whole(admin, unchanged) -> None:
    """Many tiny keys count under 1 MiB of data but weigh far more serialized,
    with their names again in data_keys: the whole object is held to 1.5 MiB."""
    api = SECRETS.api(admin)
    many_keys = {f"{i:05x}": b"" for i in range(200_000)}
    assert sum(map(len, many_keys)) < MiB
    f = await failure(api.create(SECRETS.make("many", data=many_keys)), Code.INVALID_ARGUMENT)
    _rejected_fields({"secret"}, f.fields)
    tls = {**many_keys, "tls.crt": CRT, "tls.key": KEY}  # `keep` is a TLS secret
    f = await failure(api.update(SECRETS.make("keep", data=tls), ["data"]), Code.INVALID_ARGUMENT)
    _rejected_fields({"secret"}, f.fields)
    await failure(api.get("many"), Code.NOT_FOUND)
    await unchanged()


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
async def test_an_object_with_too_many_labels(admin, unchanged, kind: Kind) -> None:
    """Each label is valid and there is no count limit, but the whole is."""
    api = kind.api(admin)
    labels = {f"k{i:05d}": "v" * 63 for i in range(30_000)}
    f = await failure(api.create(kind.make("labelled", labels=labels)), Code.INVALID_ARGUMENT)
    _rejected_fields({kind.field}, f.fields)
    f = await failure(api.update(kind.make("keep", labels=labels), ["metadata.labels"]), Code.INVALID_ARGUMENT)
    _rejected_fields({kind.field}, f.fields)
    await unchanged()


TYPE_RULES = {
    "tls-missing-key": (T.SECRET_TYPE_TLS, {"tls.crt": CRT}, {"secret.data"}),
    "tls-missing-cert": (T.SECRET_TYPE_TLS, {"tls.key": KEY}, {"secret.data"}),
    "tls-empty": (T.SECRET_TYPE_TLS, {}, {"secret.data"}),
    "tls-cert-not-pem": (T.SECRET_TYPE_TLS, {"tls.crt": b"hello", "tls.key": KEY}, {'secret.data["tls.crt"]'}),
    "tls-cert-garbage-pem": (
        T.SECRET_TYPE_TLS,
        {"tls.crt": GARBAGE_PEM_CERT, "tls.key": KEY},
        {'secret.data["tls.crt"]'},
    ),
    "tls-key-garbage-pem": (
        T.SECRET_TYPE_TLS,
        {"tls.crt": CRT, "tls.key": GARBAGE_PEM_KEY},
        {'secret.data["tls.key"]'},
    ),
    "tls-key-is-a-cert": (T.SECRET_TYPE_TLS, {"tls.crt": CRT, "tls.key": CRT}, {'secret.data["tls.key"]'}),
    "tls-key-encrypted": (T.SECRET_TYPE_TLS, {"tls.crt": CRT, "tls.key": ENCRYPTED_KEY}, {'secret.data["tls.key"]'}),
    "tls-mismatched-pair": (T.SECRET_TYPE_TLS, {"tls.crt": CRT, "tls.key": OTHER_KEY}, {"secret.data"}),
    "tls-key-unsupported-curve": (
        T.SECRET_TYPE_TLS,
        {"tls.crt": CRT, "tls.key": WEAK_CURVE_KEY},
        {'secret.data["tls.key"]'},
    ),
    "tls-cert-unsupported-curve": (
        T.SECRET_TYPE_TLS,
        {"tls.crt": WEAK_CURVE_CRT, "tls.key": KEY},
        {'secret.data["tls.crt"]'},
    ),
    "tls-pair-unsupported-curve": (
        T.SECRET_TYPE_TLS,
        {"tls.crt": WEAK_CURVE_CRT, "tls.key": WEAK_CURVE_KEY},
        {'secret.data["tls.crt"]'},
    ),
    "tls-mismatched-key-type": (
        T.SECRET_TYPE_TLS,
        {"tls.crt": CRT, "tls.key": _pem_key(ed25519.Ed25519PrivateKey.generate())},
        {"secret.data"},
    ),
    "basic-auth-empty": (T.SECRET_TYPE_BASIC_AUTH, {}, {"secret.data"}),
    "basic-auth-other-keys": (T.SECRET_TYPE_BASIC_AUTH, {"user": b"u", "pass": b"p"}, {"secret.data"}),
    "docker-missing": (T.SECRET_TYPE_DOCKER_CONFIG_JSON, {"config.json": b"{}"}, {"secret.data"}),
    "docker-invalid-json": (
        T.SECRET_TYPE_DOCKER_CONFIG_JSON,
        {".dockerconfigjson": b'{"auths": '},
        {'secret.data[".dockerconfigjson"]'},
    ),
    "docker-not-utf8": (
        T.SECRET_TYPE_DOCKER_CONFIG_JSON,
        {".dockerconfigjson": b"\xff\xfe\xfd"},
        {'secret.data[".dockerconfigjson"]'},
    ),
    "docker-deeply-nested": (
        T.SECRET_TYPE_DOCKER_CONFIG_JSON,
        {".dockerconfigjson": b"[" * 200_000},
        {'secret.data[".dockerconfigjson"]'},
    ),
}


@pytest.mark.parametrize("secret_type, data, fields", TYPE_RULES.values(), ids=TYPE_RULES.keys())
async def test_type_rules(admin, unchanged, secret_type: int, data: dict[str, bytes], fields: set[str]) -> None:
    api = SECRETS.api(admin)
    f = await failure(api.create(SECRETS.make("typed", type=secret_type, data=data)), Code.INVALID_ARGUMENT)
    _rejected_fields(fields, f.fields)
    if secret_type == T.SECRET_TYPE_TLS:  # the same rules hold when `keep`'s data is replaced
        f = await failure(api.update(SECRETS.make("keep", data=data), ["data"]), Code.INVALID_ARGUMENT)
        _rejected_fields(fields, f.fields)
    await unchanged()


GOOD_TYPES = {
    "tls": (T.SECRET_TYPE_TLS, {"tls.crt": CRT, "tls.key": KEY, "ca.crt": OTHER_CRT}),
    "basic-auth-username": (T.SECRET_TYPE_BASIC_AUTH, {"username": b"u"}),
    "basic-auth-password": (T.SECRET_TYPE_BASIC_AUTH, {"password": b"s3cr3t-p"}),
    "docker": (T.SECRET_TYPE_DOCKER_CONFIG_JSON, {".dockerconfigjson": b'{"auths": {"r.example": {}}}'}),
}


@pytest.mark.parametrize("secret_type, data", GOOD_TYPES.values(), ids=GOOD_TYPES.keys())
async def test_type_rules_accept_good_data(admin, secret_type: int, data: dict[str, bytes]) -> None:
    created = await SECRETS.api(admin).create(SECRETS.make("typed", type=secret_type, data=data))
    assert created.type == secret_type


def _secret(**fields) -> secret_pb2.Secret:
    return SECRETS.make("odd", **fields)


def _rotation(period: tuple[int, int] | None = None, grace: tuple[int, int] | None = None) -> secret_pb2.SecretRotation:
    rotation = secret_pb2.SecretRotation()
    if period is not None:
        rotation.period.CopyFrom(duration_pb2.Duration(seconds=period[0], nanos=period[1]))
    if grace is not None:
        rotation.grace_period.CopyFrom(duration_pb2.Duration(seconds=grace[0], nanos=grace[1]))
    return rotation


BAD_SECRET_FIELDS = {
    "unknown-type": (_secret(type=99), {"secret.type"}),
    # A token secret names its account; the server fills in its data.
    "token-without-account": (
        _secret(type=T.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, data={}),
        {"secret.service_account"},
    ),
    "token-with-data": (_secret(type=T.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, service_account="sa"), {"secret.data"}),
    "bad-service-account": (
        _secret(type=T.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, service_account="Bad", data={}),
        {"secret.service_account"},
    ),
    "account-on-an-opaque-secret": (_secret(service_account="sa"), {"secret.service_account"}),
    "negative-period": (_secret(rotation=_rotation(period=(-5, 0))), {"secret.rotation.period"}),
    "period-under-1m": (_secret(rotation=_rotation(period=(59, 999_999_999))), {"secret.rotation.period"}),
    # The server makes new values for token secrets only.
    "period-on-an-opaque-secret": (_secret(rotation=_rotation(period=(3600, 0))), {"secret.rotation.period"}),
    "period-too-long": (_secret(rotation=_rotation(period=(2**62, 0))), {"secret.rotation.period"}),
    "period-bad-nanos": (_secret(rotation=_rotation(period=(10, 2_000_000_000))), {"secret.rotation.period"}),
    "negative-grace": (_secret(rotation=_rotation(grace=(0, -1))), {"secret.rotation.grace_period"}),
    "grace-too-long": (_secret(rotation=_rotation(grace=(2**62, 0))), {"secret.rotation.grace_period"}),
    "everything-at-once": (
        SECRETS.make("Bad", namespace="Bad_ns", labels={"-x": "v"}, data={"a/b": b"v"}),
        {"secret.metadata.namespace", "secret.metadata.name", "secret.metadata.labels", 'secret.data["a/b"]'},
    ),
}


@pytest.mark.parametrize("secret, fields", BAD_SECRET_FIELDS.values(), ids=BAD_SECRET_FIELDS.keys())
async def test_bad_secret_fields(admin, unchanged, secret: secret_pb2.Secret, fields: set[str]) -> None:
    f = await failure(SECRETS.api(admin).create(secret), Code.INVALID_ARGUMENT)
    _rejected_fields(fields, f.fields)
    await unchanged()


async def test_secret_type_cannot_change(admin, unchanged) -> None:
    request = SECRETS.make("keep", type=T.SECRET_TYPE_OPAQUE, data={"tls.crt": CRT, "tls.key": KEY})
    f = await failure(SECRETS.api(admin).update(request, ["type"]), Code.INVALID_ARGUMENT)
    _rejected_fields({"secret.type"}, f.fields)
    await unchanged()


# -- accounts and workloads --------------------------------------------------------------------


BAD_OTHERS = {
    "sa-secret-ref": (
        SERVICE_ACCOUNTS,
        service_account_pb2.ServiceAccount(secrets=[{"name": "ok"}, {"name": "Bad"}]),
        {"service_account.secrets[1].name"},
    ),
    "sa-long-description": (
        SERVICE_ACCOUNTS,
        service_account_pb2.ServiceAccount(description="d" * 1025),
        {"service_account.description"},
    ),
    "workload-no-node": (WORKLOADS, workload_pb2.Workload(node_name=""), {"workload.node_name"}),
    "workload-bad-node": (WORKLOADS, workload_pb2.Workload(node_name="Node_1"), {"workload.node_name"}),
    "workload-bad-account": (
        WORKLOADS,
        workload_pb2.Workload(node_name="n1", service_account="Bad!"),
        {"workload.service_account"},
    ),
    "workload-bad-secret": (
        WORKLOADS,
        workload_pb2.Workload(node_name="n1", secrets=["ok", "../etc"]),
        {"workload.secrets[1]"},
    ),
}


@pytest.mark.parametrize("kind, fields_of, fields", BAD_OTHERS.values(), ids=BAD_OTHERS.keys())
async def test_bad_account_and_workload_fields(admin, unchanged, kind: Kind, fields_of, fields: set[str]) -> None:
    obj = kind.make("odd")
    for field in fields_of.DESCRIPTOR.fields:
        if field.name != "metadata":
            obj.ClearField(field.name)
    obj.MergeFrom(fields_of)
    f = await failure(kind.api(admin).create(obj), Code.INVALID_ARGUMENT)
    _rejected_fields(fields, f.fields)

    obj.metadata.name = "keep"
    f = await failure(kind.api(admin).update(obj, ["*"]), Code.INVALID_ARGUMENT)
    _rejected_fields(fields, f.fields)
    await unchanged()


# -- odd requests: never INTERNAL or UNKNOWN ----------------------------------------------------------------


BAD_SELECTORS = [
    "=v",
    "a=b=c",
    ",",
    "!",
    "a!=b!=c",
    "\u00e9",
    "a in (b,c)",
    "a,,b",
    "!=x",
    "a=\u00e9",
    "k" * 64,
    "example.com/",
    "a!b",
]


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
@pytest.mark.parametrize("selector", BAD_SELECTORS)
async def test_bad_label_selector(admin, unchanged, kind: Kind, selector: str) -> None:
    f = await failure(kind.api(admin).list(label_selector=selector), Code.INVALID_ARGUMENT)
    _rejected_fields({"label_selector"}, f.fields)
    await unchanged()


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
async def test_odd_page_sizes(admin, kind: Kind) -> None:
    api = kind.api(admin)
    for size in (-1, -(2**31)):
        f = await failure(api.list(page_size=size), Code.INVALID_ARGUMENT)
        _rejected_fields({"page_size"}, f.fields)
    for size in (2**31 - 1, 1, 0):
        await api.list(page_size=size)


async def test_odd_requests_are_never_internal(admin, unchanged) -> None:
    s = admin.secrets
    odd: list[tuple[str, Awaitable[object], Code]] = [
        ("empty create", s.CreateSecret(secret_pb2.CreateSecretRequest()), Code.INVALID_ARGUMENT),
        ("empty get", s.GetSecret(secret_pb2.GetSecretRequest()), Code.INVALID_ARGUMENT),
        ("empty update", s.UpdateSecret(secret_pb2.UpdateSecretRequest()), Code.INVALID_ARGUMENT),
        ("empty delete", s.DeleteSecret(secret_pb2.DeleteSecretRequest()), Code.INVALID_ARGUMENT),
        ("huge name", s.GetSecret(secret_pb2.GetSecretRequest(name="a" * 1_000_000)), Code.INVALID_ARGUMENT),
        (
            "missing with etag",
            s.DeleteSecret(secret_pb2.DeleteSecretRequest(name="nope", etag="\u00e9" * 100)),
            Code.NOT_FOUND,
        ),
        (
            "bad update path",
            SECRETS.api(admin).update(SECRETS.make("keep"), ["metadata..labels"]),
            Code.INVALID_ARGUMENT,
        ),
        (
            "output-only path",
            SECRETS.api(admin).update(SECRETS.make("keep"), ["rotation.next_rotate_time"]),
            Code.INVALID_ARGUMENT,
        ),
        ("data sub-path", SECRETS.api(admin).update(SECRETS.make("keep"), ["data.tls.crt"]), Code.INVALID_ARGUMENT),
        ("version path", SECRETS.api(admin).update(SECRETS.make("keep"), ["version"]), Code.INVALID_ARGUMENT),
        (
            "trailing dot path",
            SERVICE_ACCOUNTS.api(admin).update(SERVICE_ACCOUNTS.make("keep"), ["description."]),
            Code.INVALID_ARGUMENT,
        ),
        (
            "huge page token",
            s.ListSecrets(secret_pb2.ListSecretsRequest(page_token="A" * 1_000_000)),
            Code.INVALID_ARGUMENT,
        ),
        (
            "unicode page token",
            s.ListSecrets(secret_pb2.ListSecretsRequest(page_token="\u00e9\u00e9")),
            Code.INVALID_ARGUMENT,
        ),
        (
            "secret type with no data",
            s.CreateSecret(
                secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(metadata={"name": "x"}, type=T.SECRET_TYPE_TLS))
            ),
            Code.INVALID_ARGUMENT,
        ),
        (
            "weird request id",
            s.GetSecret(
                secret_pb2.GetSecretRequest(name="nope"), metadata=(("x-request-id", "../../etc; rm -rf / " * 50),)
            ),
            Code.NOT_FOUND,
        ),
    ]
    for what, call, code in odd:
        try:
            await failure(call, code)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
    await unchanged()


# -- every bad field at once, though they are checked in separate steps ----------------------


async def test_a_list_names_every_bad_field_at_once(admin, unchanged) -> None:
    request = secret_pb2.ListSecretsRequest(namespace="Bad_NS", label_selector="=x", page_size=-1, page_token="zz")
    f = await failure(admin.secrets.ListSecrets(request), Code.INVALID_ARGUMENT)
    _rejected_fields({"namespace", "label_selector", "page_size", "page_token"}, f.fields)
    await unchanged()


async def test_a_watch_names_every_bad_field_at_once(admin) -> None:
    call = admin.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(namespace="Bad_NS", label_selector="=x"))
    f = await failure(call.read(), Code.INVALID_ARGUMENT)
    _rejected_fields({"namespace", "label_selector"}, f.fields)


async def test_an_update_names_a_bad_name_and_a_bad_mask_at_once(admin, unchanged) -> None:
    f = await failure(SECRETS.api(admin).update(SECRETS.make("Bad_Name"), ["no_such_field"]), Code.INVALID_ARGUMENT)
    _rejected_fields({"secret.metadata.name", "update_mask"}, f.fields)
    await unchanged()


async def test_an_update_names_a_bad_mask_and_a_bad_field_under_a_good_path_at_once(admin, unchanged) -> None:
    request = SECRETS.make("keep", labels={"bad key!": "x"})
    f = await failure(SECRETS.api(admin).update(request, ["metadata.labels", "no_such_field"]), Code.INVALID_ARGUMENT)
    _rejected_fields({"update_mask", "secret.metadata.labels"}, f.fields)
    await unchanged()


async def test_an_update_names_a_type_change_and_a_bad_label_at_once(admin, unchanged) -> None:
    request = SECRETS.make("keep", type=T.SECRET_TYPE_OPAQUE, labels={"bad key!": "x"})
    f = await failure(SECRETS.api(admin).update(request, ["type", "metadata.labels"]), Code.INVALID_ARGUMENT)
    _rejected_fields({"secret.type", "secret.metadata.labels"}, f.fields)
    await unchanged()


async def test_a_stale_etag_is_aborted_before_the_fields_of_a_well_formed_update_are_checked(admin, unchanged) -> None:
    request = SECRETS.make("keep", labels={"bad key!": "x"})
    request.metadata.etag = "stale"
    await failure(SECRETS.api(admin).update(request, ["metadata.labels"]), Code.ABORTED)
    await unchanged()


async def test_a_token_secret_with_a_bad_key_names_both(admin, unchanged) -> None:
    secret = SECRETS.make("token", type=T.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, data={"a/b": b"v"})
    f = await failure(SECRETS.api(admin).create(secret), Code.INVALID_ARGUMENT)
    _rejected_fields({"secret.service_account", "secret.data", _data_field("a/b")}, f.fields)
    await unchanged()
