"""A fleet reconnecting at once: a burst of 2,000 Watch calls is served whole.

grpc's defaults cancel calls beyond 1,000 pending before the application picks
them up (3,000 hard), so without the server's pending-request settings part
of this burst fails with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio

from conftest import secure_channel

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc

STREAMS = 2000
CHANNELS = 20


async def test_two_thousand_watch_calls_at_once_are_all_served(server, pki, admin) -> None:
    channels = [secure_channel(server.address, pki, pki.admin) for _ in range(CHANNELS)]
    calls = []
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        stubs = [secret_pb2_grpc.SecretServiceStub(ch) for ch in channels]
        calls = [
            stubs[i % CHANNELS].WatchSecrets(secret_pb2.WatchSecretsRequest(namespace="fleet", send_initial=True))
            for i in range(STREAMS)
        ]

        async def synced(call) -> int:
            event = await call.read()
            assert event.type == meta_pb2.EVENT_TYPE_SYNCED, "an empty namespace starts with SYNCED"
            return event.revision

        revisions = await asyncio.wait_for(asyncio.gather(*(synced(c) for c in calls)), 60)
        assert len(revisions) == STREAMS

        created = await admin.secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(
                secret=secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace="fleet", name="burst"))
            )
        )

        async def added(call) -> int:
            event = await call.read()
            assert event.type == meta_pb2.EVENT_TYPE_ADDED
            return event.secret.metadata.resource_version

        seen = await asyncio.wait_for(asyncio.gather(*(added(c) for c in calls)), 60)
        assert set(seen) == {created.secret.metadata.resource_version}
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            await ch.close()
