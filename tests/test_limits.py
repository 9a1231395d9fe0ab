"""Size limits that hold for whole responses, not just single objects."""

from __future__ import annotations

from failures import digest

from satchel.v1 import meta_pb2, secret_pb2

BIG = 900 * 1024  # under the 1 MiB secret limit; five of them exceed the 4 MiB message limit


async def test_a_page_of_large_secrets_stays_under_the_message_limit(admin) -> None:
    sent = {}
    for i in range(5):
        data = {"blob": bytes([i]) * BIG}
        sent[f"big-{i}"] = digest(data)
        await admin.secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(
                secret=secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace="large", name=f"big-{i}"), data=data)
            )
        )
    seen, pages, token = {}, 0, ""
    while True:
        page = await admin.secrets.ListSecrets(
            secret_pb2.ListSecretsRequest(namespace="large", page_size=1000, page_token=token)
        )
        pages += 1
        assert page.secrets, "every page makes progress"
        for s in page.secrets:
            seen[s.metadata.name] = digest(s.data)
        token = page.next_page_token
        if not token:
            break
    assert seen == sent, "every secret listed once, with its data"
    assert pages > 1, "the byte budget split the listing into pages"
