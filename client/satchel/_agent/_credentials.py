"""Service-account certificates for the accounts of the node's workloads.

The key is made here and never leaves the node; the server signs a CSR for it
(`IssueCertificate`, which the node may call for the accounts its workloads use). Each
certificate is renewed at half its lifetime with +/-10 % jitter, so that a fleet does not renew
in step, and at once when its account changes; a failed call is retried with backoff and full
jitter. Each renewal makes a new key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives import serialization

from satchel import pki
from satchel._agent._layout import Credential, Key
from satchel._client import AsyncClient
from satchel._errors import SatchelError
from satchel.v1.service_account_pb2 import ServiceAccount

log = logging.getLogger("satchel-agent")

RENEW_AT = 0.5  # of the lifetime
JITTER = 0.1
RETRY_BASE, RETRY_CAP = 0.5, 30.0


def renew_time(issued: float, expire: float) -> float:
    """When to renew a certificate valid from `issued` to `expire`: half-way, +/-10 %."""
    return issued + (expire - issued) * RENEW_AT * random.uniform(1 - JITTER, 1 + JITTER)


class Credentials:
    """Keeps one valid certificate per wanted account; `on_change` is called after each issue."""

    def __init__(self, client: AsyncClient, ttl: float | None, on_change: Callable[[], None]) -> None:
        self._client = client
        self._ttl = ttl
        self._on_change = on_change
        self.issued: dict[Key, Credential] = {}
        self.failures: dict[Key, str] = {}  # the last error issuing for an account, until it succeeds
        self._tasks: dict[Key, tuple[int, asyncio.Task[None]]] = {}

    def adopt(self, credentials: Mapping[Key, Credential]) -> None:
        """Certificates found on disk at start (see `_state.restore`)."""
        self.issued.update(credentials)

    def want(self, accounts: Mapping[Key, ServiceAccount]) -> None:
        """Keep certificates for exactly these accounts (called after every change of the view)."""
        for key in set(self._tasks) - set(accounts):
            self._tasks.pop(key)[1].cancel()
        for key in set(self.issued) - set(accounts):
            del self.issued[key]
            self.failures.pop(key, None)
        for key, account in accounts.items():
            version = account.metadata.resource_version
            running = self._tasks.get(key)
            if running is not None and running[0] == version:
                continue
            if running is not None:
                running[1].cancel()
            current = self.issued.get(key)
            first = current.renew_time if current is not None and current.account_version == version else 0.0
            task = asyncio.create_task(self._keep(key, account, first), name=f"certificate {key[0]}/{key[1]}")
            self._tasks[key] = (version, task)

    def pending(self) -> list[Key]:
        """Accounts wanted that have no valid certificate yet."""
        now = time.time()
        return [k for k in self._tasks if k not in self.issued or self.issued[k].expire_time <= now]

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, key: Key, account: ServiceAccount, renew_at: float) -> None:
        while True:
            delay = renew_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            credential = await self._issue(key, account)
            self.issued[key] = credential
            self.failures.pop(key, None)
            self._on_change()
            renew_at = credential.renew_time

    async def _issue(self, key: Key, account: ServiceAccount) -> Credential:
        attempt = 0
        while True:
            private_key = pki.generate_key()
            csr = pki.make_csr(private_key, account.spiffe_id)
            issued = time.time()
            try:
                response = await self._client.issue_certificate(key[1], namespace=key[0], csr_pem=csr, ttl=self._ttl)
            except SatchelError as e:
                self.failures[key] = f"{type(e).__name__}: {e}"
                delay = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**attempt))
                attempt += 1
                log.warning("certificate for %s/%s not issued (%s); retrying in %.1fs", *key, e, delay)
                await asyncio.sleep(delay)
                continue
            expire = response.expire_time.seconds + response.expire_time.nanos / 1e9
            key_pem = private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            log.info("certificate for %s/%s issued, expires in %.0fs", *key, expire - time.time())
            return Credential(
                response.certificate_chain_pem.encode(),
                key_pem,
                expire,
                renew_time(issued, expire),
                account.metadata.resource_version,
            )
