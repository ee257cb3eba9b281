"""Prometheus metrics of a tagging job: served on a port while it runs, pushed to a Pushgateway when it ends.

Metric names are part of the ops contract (dashboards and alerts depend on them) — change them only with the
contract:

- ``mer_items_listed_total``, ``mer_items_tagged_total``, ``mer_items_skipped_total`` (counters)
- ``mer_items_failed_total{stage}`` (counter), ``mer_stage_seconds{stage}`` (histogram, seconds)
- ``mer_items_per_second`` (gauge: tagged items per wall-clock second of the run)
- ``mer_run_last_success_timestamp_seconds``, ``mer_run_last_finish_timestamp_seconds`` (gauges, Unix seconds)
- ``mer_run_failed`` (gauge, 1 if the last run failed)
- ``mer_run_heartbeat_timestamp_seconds`` (gauge, Unix seconds: the running job's last heartbeat; pushed alone with
  push-add every heartbeat, so a killed run leaves it behind, newer than the last finish, and ageing)
- ``mer_labels_total{quadrant}`` (counter)

Stages are :data:`STAGES`. Every job gets its own ``CollectorRegistry`` (never the process-global one) so two jobs
or tests in one process do not share counters.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, pushadd_to_gateway, start_http_server

from mer.config import QUADRANTS

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("list", "read", "features", "inference", "write")
# Seconds: from a small batch's write (~ms) to a big listing or inference batch (minutes).
STAGE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return stage


def _without_credentials(url: str) -> str:
    """The URL with any ``user:password@`` removed, for log messages."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class JobMetrics:
    """The metrics of one tagging job, in a registry of their own.

    Counters and gauges are attributes (``items_listed``, ``items_tagged``, ``items_skipped``, ``items_failed``,
    ``stage_seconds``, ``items_per_second``, ``run_last_finish``, ``run_failed``, ``run_heartbeat``, ``labels``) for
    direct use; the methods below cover the usual updates. Every ``stage`` and ``quadrant`` series exists from the
    start (at 0), so rates and alerts work before the first failure.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.items_listed = Counter("mer_items_listed_total", "Items found in object storage.", registry=r)
        self.items_tagged = Counter("mer_items_tagged_total", "Items labelled and written to the catalog.", registry=r)
        self.items_skipped = Counter(
            "mer_items_skipped_total", "Items skipped: already tagged at the same object and model version.", registry=r
        )
        self.items_failed = Counter(
            "mer_items_failed_total", "Items (or objects) that failed, by stage.", ["stage"], registry=r
        )
        self.stage_seconds = Histogram(
            "mer_stage_seconds", "Seconds spent per timed unit of work, by stage.", ["stage"],
            buckets=STAGE_BUCKETS, registry=r,
        )
        self.items_per_second = Gauge("mer_items_per_second", "Tagged items per wall-clock second of the run.",
                                      registry=r)
        self.run_last_finish = Gauge(
            "mer_run_last_finish_timestamp_seconds", "Unix time the last run finished (success or not).", registry=r
        )
        self.run_failed = Gauge("mer_run_failed", "1 if the last run failed, else 0.", registry=r)
        self.labels = Counter("mer_labels_total", "Labels written, by quadrant.", ["quadrant"], registry=r)
        # The heartbeat twice: in the job's registry (served, and in the final push) and alone in a registry of its
        # own, pushed every heartbeat. Push-add replaces only the metrics it names, so those pushes leave the last
        # run's totals in the Pushgateway alone.
        heartbeat_help = "Unix time of the running job's last heartbeat (its final push: the finish time)."
        self.run_heartbeat = Gauge("mer_run_heartbeat_timestamp_seconds", heartbeat_help, registry=r)
        self._heartbeat_registry = CollectorRegistry()
        self._pushed_heartbeat = Gauge("mer_run_heartbeat_timestamp_seconds", heartbeat_help,
                                       registry=self._heartbeat_registry)
        self._heartbeat_push_failed = False
        # Registered only on success (see finish): a Pushgateway push replaces every pushed metric of the group, and
        # pushing this gauge from a failed run would overwrite the last success time with 0.
        self.run_last_success: Gauge | None = None
        for stage in STAGES:
            self.items_failed.labels(stage=stage)
            self.stage_seconds.labels(stage=stage)
        for quadrant in QUADRANTS:
            self.labels.labels(quadrant=quadrant)
        self._server: Any = None
        self._started = time.monotonic()
        self._tagged = 0

    # --- updates ---------------------------------------------------------------------------------------------------

    def record_listed(self, n: int = 1) -> None:
        self.items_listed.inc(n)

    def record_skipped(self, n: int = 1) -> None:
        self.items_skipped.inc(n)

    def record_failed(self, stage: str, n: int = 1) -> None:
        self.items_failed.labels(stage=_check_stage(stage)).inc(n)

    def record_tagged(self, quadrants: Iterable[str]) -> None:
        """Count tagged items, one per quadrant label given ("Q1".."Q4"), and refresh items per second."""
        n = 0
        for quadrant in quadrants:
            if quadrant not in QUADRANTS:
                raise ValueError(f"quadrant must be one of {QUADRANTS}, got {quadrant!r}")
            self.labels.labels(quadrant=quadrant).inc()
            n += 1
        self.items_tagged.inc(n)
        self._tagged += n
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            self.items_per_second.set(self._tagged / elapsed)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Observe the seconds the ``with`` block takes into ``mer_stage_seconds{stage}`` (also when it raises)."""
        histogram = self.stage_seconds.labels(stage=_check_stage(stage))
        start = time.perf_counter()
        try:
            yield
        finally:
            histogram.observe(time.perf_counter() - start)

    def heartbeat(self, now: float | None = None) -> None:
        """The run is alive at ``now`` (Unix seconds; default: now)."""
        now = time.time() if now is None else now
        self.run_heartbeat.set(now)
        self._pushed_heartbeat.set(now)

    def finish(self, *, success: bool, now: float | None = None) -> None:
        """Mark the run's end: finish time (the last heartbeat too), ``mer_run_failed``, and on success the
        last-success time."""
        now = time.time() if now is None else now
        self.heartbeat(now)
        self.run_last_finish.set(now)
        self.run_failed.set(0 if success else 1)
        if success:
            if self.run_last_success is None:
                self.run_last_success = Gauge(
                    "mer_run_last_success_timestamp_seconds", "Unix time the last successful run finished.",
                    registry=self.registry,
                )
            self.run_last_success.set(now)

    # --- exposition ------------------------------------------------------------------------------------------------

    def serve(self, port: int = 0, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP in a background thread; ``port=0`` picks a free port. Returns the port."""
        if self._server is not None:
            raise RuntimeError("metrics are already being served")
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        """Stop serving (no-op if not serving)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def push_heartbeat(self, gateway_url: str, job: str = "mer_tag", *, timeout: float = 10.0) -> bool:
        """Push-add the heartbeat alone (see :meth:`heartbeat`). Returns whether it worked; only the first failure
        of a run is logged as a warning (a Pushgateway down for the night would otherwise warn every beat)."""
        try:
            pushadd_to_gateway(gateway_url, job=job, registry=self._heartbeat_registry, timeout=timeout)
        except Exception as error:  # noqa: BLE001 — any network/HTTP error: a lost heartbeat must not stop the run
            level = logging.DEBUG if self._heartbeat_push_failed else logging.WARNING
            log.log(level, "could not push the heartbeat to %s: %s", _without_credentials(gateway_url), error)
            self._heartbeat_push_failed = True
            return False
        return True

    def push(self, gateway_url: str, job: str = "mer_tag", *, timeout: float = 10.0) -> bool:
        """Push-add the metrics to a Pushgateway (the batch-job way). Returns whether it worked.

        A failed push is logged as a warning and never raised: losing one push must not fail a night's tagging.
        """
        try:
            pushadd_to_gateway(gateway_url, job=job, registry=self.registry, timeout=timeout)
        except Exception as error:  # noqa: BLE001 — any network/HTTP error: warn and carry on
            log.warning("could not push metrics to %s: %s", _without_credentials(gateway_url), error)
            return False
        return True
