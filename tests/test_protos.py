"""The API's source of truth: protos/ is buf-clean, the committed generated code
matches it byte for byte, and it declares every service and RPC DESIGN.md names.
"""

from __future__ import annotations

import importlib
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATED = ROOT / "client" / "satchel" / "v1"
# Files in client/satchel/v1 that gen_protos.py does not write.
HAND_WRITTEN = {"__init__.py"}


def _buf() -> str:
    """Returns the pinned buf binary; fails (never skips) when it is missing."""
    found = shutil.which("buf")
    if found:
        return found
    local = ROOT / "node_modules" / ".bin" / "buf"
    if local.is_file():
        return str(local)
    pytest.fail(
        "buf not found on PATH nor at node_modules/.bin/buf; install it with "
        "`npm ci` (package.json pins it) or run `make test`"
    )


def _run_buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_buf(), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_buf_lint_passes() -> None:
    result = _run_buf("lint")
    assert result.returncode == 0, f"buf lint:\n{result.stdout}{result.stderr}"


def test_buf_format_is_clean() -> None:
    result = _run_buf("format", "-d", "--exit-code")
    assert result.returncode == 0, (
        f"buf format found unformatted protos (fix with `buf format -w`):\n{result.stdout}{result.stderr}"
    )


def _files(directory: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and p.name not in HAND_WRITTEN}


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"gen_protos.py failed:\n{result.stdout}{result.stderr}"
    fresh = _files(tmp_path / "satchel" / "v1")
    committed = _files(GENERATED)
    assert fresh, "gen_protos.py generated nothing"
    fix = "run `make gen` (scripts/gen_protos.py) and commit the result"
    assert sorted(fresh.keys() - committed.keys()) == [], f"missing from client/satchel/v1; {fix}"
    assert sorted(committed.keys() - fresh.keys()) == [], f"stale in client/satchel/v1; {fix}"
    drifted = sorted(name for name in fresh if fresh[name] != committed[name])
    assert drifted == [], f"generated code drifted from protos/; {fix}"


# Every service and RPC DESIGN.md names, with the module that declares it.
SERVICES = {
    "ServiceAccountService": (
        "service_account_pb2",
        [
            "CreateServiceAccount",
            "GetServiceAccount",
            "ListServiceAccounts",
            "UpdateServiceAccount",
            "DeleteServiceAccount",
            "WatchServiceAccounts",
            "IssueCertificate",
        ],
    ),
    "SecretService": (
        "secret_pb2",
        [
            "CreateSecret",
            "GetSecret",
            "ListSecrets",
            "UpdateSecret",
            "DeleteSecret",
            "RotateSecret",
            "WatchSecrets",
        ],
    ),
    "WorkloadService": (
        "workload_pb2",
        [
            "CreateWorkload",
            "GetWorkload",
            "ListWorkloads",
            "UpdateWorkload",
            "DeleteWorkload",
            "WatchWorkloads",
        ],
    ),
    "TokenService": ("token_pb2", ["ReviewToken", "GetPublicKeys"]),
    "AuthorizationService": ("authorization_pb2", ["CheckAccess"]),
    "AdminService": ("admin_pb2", ["ResealSecrets", "RotateSigningKey"]),
}

RPCS = [(service, module, rpc) for service, (module, rpcs) in SERVICES.items() for rpc in rpcs]


def _service(module: str, service: str):
    descriptor = importlib.import_module(f"satchel.v1.{module}").DESCRIPTOR
    assert descriptor.package == "satchel.v1"
    assert service in descriptor.services_by_name, f"{module} lacks service {service}"
    return descriptor.services_by_name[service]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_declares_the_designed_rpcs(service: str) -> None:
    module, rpcs = SERVICES[service]
    declared = set(_service(module, service).methods_by_name)
    assert sorted(set(rpcs) - declared) == []


@pytest.mark.parametrize(("service", "module", "rpc"), RPCS, ids=[r for _, _, r in RPCS])
def test_rpc_has_its_own_request_and_response(service: str, module: str, rpc: str) -> None:
    method = _service(module, service).methods_by_name.get(rpc)
    assert method is not None, f"{service} lacks {rpc}"
    assert method.input_type.full_name == f"satchel.v1.{rpc}Request"
    assert method.output_type.full_name == f"satchel.v1.{rpc}Response"
    assert not method.client_streaming
    assert method.server_streaming == rpc.startswith("Watch")


# The request and response fields DESIGN.md spells out (more may follow).
LIST_REQUEST = {"namespace", "label_selector", "page_size", "page_token"}
WATCH_REQUEST = {"namespace", "label_selector", "since_revision", "send_initial"}
FIELDS = {
    "service_account_pb2": {
        "CreateServiceAccountRequest": {"service_account"},
        "CreateServiceAccountResponse": {"service_account"},
        "GetServiceAccountRequest": {"namespace", "name"},
        "GetServiceAccountResponse": {"service_account"},
        "ListServiceAccountsRequest": LIST_REQUEST,
        "ListServiceAccountsResponse": {"service_accounts", "next_page_token", "revision"},
        "UpdateServiceAccountRequest": {"service_account", "update_mask"},
        "UpdateServiceAccountResponse": {"service_account"},
        "DeleteServiceAccountRequest": {"namespace", "name", "etag"},
        "DeleteServiceAccountResponse": set(),
        "WatchServiceAccountsRequest": WATCH_REQUEST,
        "WatchServiceAccountsResponse": {"type", "revision", "service_account"},
        "IssueCertificateRequest": {"namespace", "name", "csr_pem", "ttl"},
        "IssueCertificateResponse": {"certificate_chain_pem", "expire_time"},
    },
    "secret_pb2": {
        "CreateSecretRequest": {"secret"},
        "CreateSecretResponse": {"secret"},
        "GetSecretRequest": {"namespace", "name"},
        "GetSecretResponse": {"secret"},
        "ListSecretsRequest": LIST_REQUEST,
        "ListSecretsResponse": {"secrets", "next_page_token", "revision"},
        "UpdateSecretRequest": {"secret", "update_mask"},
        "UpdateSecretResponse": {"secret"},
        "DeleteSecretRequest": {"namespace", "name", "etag"},
        "DeleteSecretResponse": set(),
        "RotateSecretRequest": {"namespace", "name", "data", "grace_period"},
        "RotateSecretResponse": {"secret"},
        "WatchSecretsRequest": WATCH_REQUEST,
        "WatchSecretsResponse": {"type", "revision", "secret"},
    },
    "workload_pb2": {
        "CreateWorkloadRequest": {"workload"},
        "CreateWorkloadResponse": {"workload"},
        "GetWorkloadRequest": {"namespace", "name"},
        "GetWorkloadResponse": {"workload"},
        "ListWorkloadsRequest": LIST_REQUEST,
        "ListWorkloadsResponse": {"workloads", "next_page_token", "revision"},
        "UpdateWorkloadRequest": {"workload", "update_mask"},
        "UpdateWorkloadResponse": {"workload"},
        "DeleteWorkloadRequest": {"namespace", "name", "etag"},
        "DeleteWorkloadResponse": set(),
        "WatchWorkloadsRequest": WATCH_REQUEST,
        "WatchWorkloadsResponse": {"type", "revision", "workload"},
    },
    "token_pb2": {
        "ReviewTokenRequest": {"token", "audiences"},
        "ReviewTokenResponse": {
            "authenticated",
            "username",
            "uid",
            "groups",
            "audiences",
            "expire_time",
            "reason",
        },
        "GetPublicKeysRequest": set(),
        "GetPublicKeysResponse": {"jwks_json"},
    },
    "authorization_pb2": {
        "CheckAccessRequest": {"verb", "resource", "namespace", "name"},
        "CheckAccessResponse": {"allowed", "reason"},
    },
}

MESSAGES = [(module, message) for module, messages in FIELDS.items() for message in messages]


@pytest.mark.parametrize(("module", "message"), MESSAGES, ids=[m for _, m in MESSAGES])
def test_message_has_the_designed_fields(module: str, message: str) -> None:
    descriptor = importlib.import_module(f"satchel.v1.{module}").DESCRIPTOR
    assert message in descriptor.message_types_by_name, f"{module} lacks {message}"
    fields = set(descriptor.message_types_by_name[message].fields_by_name)
    assert sorted(FIELDS[module][message] - fields) == []
