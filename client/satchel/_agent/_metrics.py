"""`--metrics-file`: the agent's status in the Prometheus text format, written atomically
(node_exporter's textfile-collector convention; prometheus_client writes a temporary file
beside it and renames it over the old one)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass
class Status:
    """What the metrics file says, gathered by the agent after each pass."""

    revision: int = 0
    last_sync_time: float = 0.0  # Unix seconds of the last pass that left the disk as wanted
    connected: bool = False
    versions: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (ns, workload, secret)
    certificates: dict[tuple[str, str], float] = field(default_factory=dict)  # (ns, account): expiry
    hook_runs: int = 0
    hook_failures: int = 0
    writes: int = 0
    removals: int = 0
    errors: int = 0


class _Collector:
    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status
        yield _gauge("satchel_agent_last_applied_revision", "The revision the files on disk reflect.", s.revision)
        yield _gauge(
            "satchel_agent_last_sync_timestamp_seconds",
            "When the files last matched everything the server had sent (Unix time).",
            s.last_sync_time,
        )
        yield _gauge("satchel_agent_connected", "1 while the agent's watch streams are connected.", int(s.connected))
        versions = GaugeMetricFamily(
            "satchel_agent_secret_version",
            "The version of each secret on disk, per workload.",
            labels=["namespace", "workload", "secret"],
        )
        for (ns, workload, secret), version in sorted(s.versions.items()):
            versions.add_metric([ns, workload, secret], version)
        yield versions
        certificates = GaugeMetricFamily(
            "satchel_agent_certificate_expiry_timestamp_seconds",
            "When each service account's certificate on disk expires (Unix time).",
            labels=["namespace", "service_account"],
        )
        for (ns, account), expiry in sorted(s.certificates.items()):
            certificates.add_metric([ns, account], expiry)
        yield certificates
        yield _counter("satchel_agent_hook_runs", "Runs of the --on-change command.", s.hook_runs)
        yield _counter("satchel_agent_hook_failures", "Runs of --on-change that failed or timed out.", s.hook_failures)
        yield _counter("satchel_agent_leaf_writes", "Leaf directories written (a new version landed).", s.writes)
        yield _counter("satchel_agent_leaf_removals", "Leaf and workload directories removed.", s.removals)
        yield _counter("satchel_agent_errors", "Writes and removals that failed (retried on the next pass).", s.errors)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def write(path: Path, status: Status) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(status))
    write_to_textfile(str(path), registry)
