"""The clients, `Client` (blocking) and `AsyncClient` (asyncio): one method per RPC.

Three tiers: the generated stubs; the transports (`_transport`), which own the channel, send the
credentials and metadata and turn `grpc.RpcError` into `SatchelError`s; and these clients, whose
methods `_methods` makes from the request builders in `_requests`, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import weakref
from os import PathLike
from typing import Any

from satchel import _requests
from satchel._config import ClientConfig
from satchel._methods import async_listing, async_unary, async_watch, listing, unary, watch
from satchel._transport import AsyncTransport, Transport
from satchel._watch import AsyncWatchStream, WatchStream


def _config(config: ClientConfig | None, **fields: Any) -> ClientConfig:
    given = {name: value for name, value in fields.items() if value is not None}
    if config is None:
        return ClientConfig(**{"server": "", "ca": "", "cert": "", "key": "", **given})
    return dataclasses.replace(config, **given)


class Client:
    """A blocking Satchel client over one gRPC channel; safe to share between threads.

    Build it from a `ClientConfig`, from keyword arguments (`Client(server="localhost:7443",
    ca=..., cert=..., key=...)`) or from the environment (`Client.from_env()`), and close it (or
    use it as a context manager). Failed calls raise `SatchelError` subclasses.

    Every method also takes, keyword-only, `metadata=` (a mapping or `(key, value)` pairs, sent
    beside the config's bearer token, whose `authorization` it may not repeat) and, but for
    `watch_*`, `timeout=` (seconds or a timedelta, instead of the config's `timeout`; a `list_*`
    gives each page that long). `list_*` return a `ListIterator`, whose `revision` a watch can
    start from; `watch_*` return a `WatchStream`.

    Reads (`get_*`, the pages of `list_*`, `review_token`, `get_public_keys`, `check_access`) that fail with
    UNAVAILABLE are tried again, a few times, after a backoff with full jitter (0.1 s doubling,
    at most 2 s), within the call's timeout. Writes are never retried: an UnavailableError from
    one leaves it unknown whether the server applied it.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        server: str | None = None,
        ca: str | PathLike[str] | None = None,
        cert: str | PathLike[str] | None = None,
        key: str | PathLike[str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.config = _config(config, server=server, ca=ca, cert=cert, key=key, token=token, timeout=timeout)
        self._transport = Transport(self.config)
        self._streams: weakref.WeakSet[WatchStream[Any]] = weakref.WeakSet()

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """A client configured by `ClientConfig.from_env(**overrides)`."""
        return cls(ClientConfig.from_env(**overrides))

    def close(self) -> None:
        """Close open watches and the channel."""
        for stream in list(self._streams):
            stream.close()
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    create_service_account = unary(_requests.create_service_account)
    get_service_account = unary(_requests.get_service_account)
    list_service_accounts = listing(_requests.list_service_accounts)
    update_service_account = unary(_requests.update_service_account)
    delete_service_account = unary(_requests.delete_service_account)
    watch_service_accounts = watch(_requests.watch_service_accounts)
    issue_certificate = unary(_requests.issue_certificate)

    create_secret = unary(_requests.create_secret)
    get_secret = unary(_requests.get_secret)
    list_secrets = listing(_requests.list_secrets)
    update_secret = unary(_requests.update_secret)
    delete_secret = unary(_requests.delete_secret)
    rotate_secret = unary(_requests.rotate_secret)
    watch_secrets = watch(_requests.watch_secrets)

    create_workload = unary(_requests.create_workload)
    get_workload = unary(_requests.get_workload)
    list_workloads = listing(_requests.list_workloads)
    update_workload = unary(_requests.update_workload)
    delete_workload = unary(_requests.delete_workload)
    watch_workloads = watch(_requests.watch_workloads)

    review_token = unary(_requests.review_token)
    get_public_keys = unary(_requests.get_public_keys)

    check_access = unary(_requests.check_access)

    reseal_secrets = unary(_requests.reseal_secrets)
    rotate_signing_key = unary(_requests.rotate_signing_key)


class AsyncClient:
    """An asyncio Satchel client over one `grpc.aio` channel, bound to the loop that first uses it.

    The same methods as `Client`, with the same `timeout=` and `metadata=` and the same retries:
    unary ones are coroutines, `list_*` return `AsyncListIterator`s and `watch_*` return
    `AsyncWatchStream`s. Close it with `await client.close()` or `async with`.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        server: str | None = None,
        ca: str | PathLike[str] | None = None,
        cert: str | PathLike[str] | None = None,
        key: str | PathLike[str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.config = _config(config, server=server, ca=ca, cert=cert, key=key, token=token, timeout=timeout)
        self._transport = AsyncTransport(self.config)
        self._streams: weakref.WeakSet[AsyncWatchStream[Any]] = weakref.WeakSet()

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncClient:
        """A client configured by `ClientConfig.from_env(**overrides)`."""
        return cls(ClientConfig.from_env(**overrides))

    async def close(self) -> None:
        """Close open watches and the channel."""
        for stream in list(self._streams):
            await stream.aclose()
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    create_service_account = async_unary(_requests.create_service_account)
    get_service_account = async_unary(_requests.get_service_account)
    list_service_accounts = async_listing(_requests.list_service_accounts)
    update_service_account = async_unary(_requests.update_service_account)
    delete_service_account = async_unary(_requests.delete_service_account)
    watch_service_accounts = async_watch(_requests.watch_service_accounts)
    issue_certificate = async_unary(_requests.issue_certificate)

    create_secret = async_unary(_requests.create_secret)
    get_secret = async_unary(_requests.get_secret)
    list_secrets = async_listing(_requests.list_secrets)
    update_secret = async_unary(_requests.update_secret)
    delete_secret = async_unary(_requests.delete_secret)
    rotate_secret = async_unary(_requests.rotate_secret)
    watch_secrets = async_watch(_requests.watch_secrets)

    create_workload = async_unary(_requests.create_workload)
    get_workload = async_unary(_requests.get_workload)
    list_workloads = async_listing(_requests.list_workloads)
    update_workload = async_unary(_requests.update_workload)
    delete_workload = async_unary(_requests.delete_workload)
    watch_workloads = async_watch(_requests.watch_workloads)

    review_token = async_unary(_requests.review_token)
    get_public_keys = async_unary(_requests.get_public_keys)

    check_access = async_unary(_requests.check_access)

    reseal_secrets = async_unary(_requests.reseal_secrets)
    rotate_signing_key = async_unary(_requests.rotate_signing_key)
