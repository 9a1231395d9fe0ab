"""Rotation of a secret: a new version of its data, the previous version left
valid for a grace period, and the next scheduled rotation. Pure functions of
protos and times; the token a token secret is rotated to is the caller's."""

from __future__ import annotations

import datetime
import random
from collections.abc import Mapping

from google.protobuf import duration_pb2

from satchel.v1 import secret_pb2

from ..errors import FailedPrecondition
from ._fields import MAX_DURATION_SECONDS, set_data_keys, validate
from ._kinds import copy_of
from ._validation import Violations

Secret = secret_pb2.Secret
TOKEN = secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN
DEFAULT_GRACE = datetime.timedelta(minutes=10)
MIN_PERIOD = datetime.timedelta(minutes=1)
JITTER = 0.02  # a scheduled rotation is due up to this share of its period late, at most a minute


def check_grace_period(v: Violations, field: str, grace: duration_pb2.Duration | None) -> None:
    if grace is None:
        return
    if grace.seconds < 0 or grace.nanos < 0:
        v.add(field, "must not be negative")
    elif grace.seconds > MAX_DURATION_SECONDS or grace.nanos >= 1_000_000_000:
        v.add(field, f"is not a valid duration (at most {MAX_DURATION_SECONDS}s)")


def grace_of(current: Secret, requested: duration_pb2.Duration | None) -> datetime.timedelta:
    """The request's grace period, else the secret's own, else 10 minutes."""
    if requested is not None:
        return requested.ToTimedelta()
    if current.rotation.HasField("grace_period"):
        return current.rotation.grace_period.ToTimedelta()
    return DEFAULT_GRACE


def next_due(period: datetime.timedelta, now: datetime.datetime) -> datetime.datetime:
    """When a secret rotated at `now` is next due: a period later, plus a little
    jitter so that secrets made together do not all rotate at once."""
    jitter = min(period * JITTER, datetime.timedelta(minutes=1))
    return now + period + jitter * random.random()


def rotated(
    current: Secret,
    data: Mapping[str, bytes],
    *,
    grace: datetime.timedelta,
    now: datetime.datetime,
) -> Secret:
    """The next version of `current` holding `data`: `version` + 1, rotated now,
    the previous version valid until now + `grace`, the next rotation scheduled
    if the secret has a period. Raises for an immutable secret and for data
    that would not be valid on Create."""
    meta = current.metadata
    if current.immutable:
        raise FailedPrecondition(
            f"secret {meta.namespace}/{meta.name} is immutable: it cannot be rotated", reason="SECRET_IMMUTABLE"
        )
    new = copy_of(current)
    new.data.clear()
    new.data.update(data)
    new.version = current.version + 1
    set_data_keys(new)
    new.rotation.last_rotate_time.FromDatetime(now)
    new.previous_version_expire_time.FromDatetime(now + grace)
    new.rotation.ClearField("next_rotate_time")  # the due time this rotation answers is past
    if current.rotation.HasField("period"):
        new.rotation.next_rotate_time.FromDatetime(next_due(current.rotation.period.ToTimedelta(), now))
    validate(new)
    return new
