"""The token controller: every service account has one token secret, kept in
step with the account inside the write that changes either, so that watchers
see both changes at one revision (Kubernetes' token controller does the same
after the fact). Its methods run in write functions, in the store's writer
thread.

- Creating an account creates `<name>-token` (type SERVICE_ACCOUNT_TOKEN, data
  `token`, `ca.crt`, `namespace`, `service_account` set) and lists it in the
  account's `secrets`; so does the `default` account a workload creates.
- A token secret created by a caller (no data) for an account that has none
  gets its data here and is listed by the account; a second one is refused.
- Deleting an account deletes its token secret; deleting a token secret takes
  it off its account's list. An update of the account's `secrets` keeps it.
"""

from __future__ import annotations

import datetime
import uuid

from satchel.v1 import secret_pb2, service_account_pb2

from .. import model
from ..auth import Tokens
from ..errors import FailedPrecondition
from ..model import SECRETS, SERVICE_ACCOUNTS, TOKEN
from ..store import Transaction

Secret = secret_pb2.Secret
ServiceAccount = service_account_pb2.ServiceAccount


class TokenSecrets:
    def __init__(self, tokens: Tokens, ca_cert: bytes, trust_domain: str) -> None:
        self.tokens = tokens
        self._ca_cert = ca_cert
        self._trust_domain = trust_domain

    def fill(
        self, txn: Transaction, account: ServiceAccount, secret: Secret, *, now: datetime.datetime | None = None
    ) -> None:
        """Sets the data of token secret `secret` for its `version`: a token for
        `account` signed now, the CA certificate, the namespace. A new secret is
        given its uid here, which the token names. RotateSecret calls this with
        the next version, the grace window being its own to set. The secret is
        due for rotation by half its token's lifetime, if not sooner by its own
        period, so that its token is renewed long before it expires."""
        if not secret.metadata.uid:
            secret.metadata.uid = str(uuid.uuid4())
        now = now or datetime.datetime.now(datetime.UTC)
        renew_by = model.next_due(datetime.timedelta(seconds=self.tokens.lifetime / 2), now)
        schedule = secret.rotation.next_rotate_time
        if not secret.rotation.HasField("next_rotate_time") or schedule.ToDatetime(tzinfo=datetime.UTC) > renew_by:
            schedule.FromDatetime(renew_by)
        token = self.tokens.sign(txn, account, secret)
        secret.data.clear()
        secret.data.update(
            {"token": token.encode(), "ca.crt": self._ca_cert, "namespace": account.metadata.namespace.encode()}
        )
        model.set_data_keys(secret)

    def create_account(self, txn: Transaction, account: ServiceAccount) -> ServiceAccount:
        """Writes a new (prepared) account and its token secret; returns the stored account."""
        ns, name = account.metadata.namespace, account.metadata.name
        secret_name = model.token_secret_name(name)
        if txn.get(SECRETS, ns, secret_name, with_data=False) is not None:
            raise FailedPrecondition(
                f"secret {ns}/{secret_name} already exists, and the token secret of service account {ns}/{name}"
                " is to have that name; delete or rename that secret first",
                reason="TOKEN_SECRET_NAME_TAKEN",
            )
        if all(ref.name != secret_name for ref in account.secrets):
            account.secrets.add(name=secret_name)
        stored = txn.put(account)
        secret = Secret(type=TOKEN, service_account=name)
        secret.metadata.namespace, secret.metadata.name = ns, secret_name
        model.prepare_create(secret, trust_domain=self._trust_domain)
        self.fill(txn, stored, secret)
        txn.put(secret)
        return stored

    def create_token_secret(self, txn: Transaction, secret: Secret) -> Secret:
        """Writes a caller's (prepared) token secret, which names an account that
        has none, with its data filled in; the account then lists it."""
        ns, name = secret.metadata.namespace, secret.service_account
        account = txn.get(SERVICE_ACCOUNTS, ns, name)
        if account is None:
            raise FailedPrecondition(
                f"service account {ns}/{name} does not exist; create it first (which makes its token secret)",
                reason="SERVICE_ACCOUNT_NOT_FOUND",
            )
        assert isinstance(account, ServiceAccount)
        held = self.token_secret_of(txn, account)
        if held:
            raise FailedPrecondition(
                f"service account {ns}/{name} already has a token secret, {ns}/{held}; an account has at most one",
                reason="TOKEN_SECRET_EXISTS",
            )
        self.fill(txn, account, secret)
        stored = txn.put(secret)
        if all(ref.name != secret.metadata.name for ref in account.secrets):
            account.secrets.add(name=secret.metadata.name)
            txn.put(account)
        return stored

    @staticmethod
    def token_secret_of(txn: Transaction, account: ServiceAccount) -> str:
        """The name of the token secret of `account` among those it lists; empty if none."""
        ns, name = account.metadata.namespace, account.metadata.name
        for ref in account.secrets:
            secret = txn.get(SECRETS, ns, ref.name, with_data=False)
            if isinstance(secret, Secret) and secret.type == TOKEN and secret.service_account == name:
                return ref.name
        return ""

    def keep_reference(self, txn: Transaction, current: ServiceAccount, updated: ServiceAccount) -> None:
        """An update of an account's `secrets` keeps its token secret on the list,
        so that its workloads keep their token."""
        own = self.token_secret_of(txn, current)
        if own and all(ref.name != own for ref in updated.secrets):
            updated.secrets.add(name=own)

    def delete_account(self, txn: Transaction, account: ServiceAccount) -> None:
        """Deletes the token secret of an account that is being deleted."""
        own = self.token_secret_of(txn, account)
        if own:
            txn.delete(SECRETS, account.metadata.namespace, own)

    @staticmethod
    def forget_secret(txn: Transaction, secret: Secret) -> None:
        """Takes a deleted token secret off its account's list."""
        if secret.type != TOKEN:
            return
        account = txn.get(SERVICE_ACCOUNTS, secret.metadata.namespace, secret.service_account)
        if not isinstance(account, ServiceAccount):
            return
        kept = [ref for ref in account.secrets if ref.name != secret.metadata.name]
        if len(kept) != len(account.secrets):
            del account.secrets[:]
            account.secrets.extend(kept)
            txn.put(account)
