"""Job metrics over real HTTP: the /metrics endpoint and a stand-in Pushgateway (a fresh one per test: the
``pushgateway`` fixture of tests/fixtures_services.py)."""
from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from fixtures_services import FakePushgateway
from mer.tagging.metrics import STAGES, JobMetrics

CONTRACT_NAMES = {
    "mer_items_listed_total", "mer_items_tagged_total", "mer_items_skipped_total", "mer_items_failed_total",
    "mer_stage_seconds_count", "mer_items_per_second", "mer_run_last_success_timestamp_seconds",
    "mer_run_last_finish_timestamp_seconds", "mer_run_failed", "mer_labels_total",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run_a_small_job(metrics: JobMetrics, *, success: bool = True) -> None:
    metrics.record_listed(5)
    metrics.record_skipped(1)
    metrics.record_failed("read")
    with metrics.timed("features"):
        pass
    with metrics.timed("inference"):
        pass
    metrics.record_tagged(["Q1", "Q3", "Q3"])
    metrics.finish(success=success, now=1_700_000_000.0)


def test_served_metrics_show_the_contract_names_with_values() -> None:
    metrics = JobMetrics()
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        assert port > 0
        run_a_small_job(metrics)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        metrics.stop()

    got = samples(text)
    assert CONTRACT_NAMES <= {name for name, _ in got}
    assert got[("mer_items_listed_total", ())] == 5
    assert got[("mer_items_skipped_total", ())] == 1
    assert got[("mer_items_tagged_total", ())] == 3
    assert got[("mer_items_failed_total", (("stage", "read"),))] == 1
    assert got[("mer_items_failed_total", (("stage", "write"),))] == 0  # every stage exists from the start
    assert got[("mer_labels_total", (("quadrant", "Q3"),))] == 2
    assert got[("mer_labels_total", (("quadrant", "Q2"),))] == 0
    assert got[("mer_stage_seconds_count", (("stage", "features"),))] == 1
    assert got[("mer_stage_seconds_count", (("stage", "list"),))] == 0
    assert got[("mer_items_per_second", ())] > 0
    assert got[("mer_run_failed", ())] == 0
    assert got[("mer_run_last_success_timestamp_seconds", ())] == 1_700_000_000.0
    assert got[("mer_run_last_finish_timestamp_seconds", ())] == 1_700_000_000.0


def test_each_job_has_its_own_registry() -> None:
    first, second = JobMetrics(), JobMetrics()
    first.record_listed(3)
    assert first.registry.get_sample_value("mer_items_listed_total") == 3
    assert second.registry.get_sample_value("mer_items_listed_total") == 0
    assert REGISTRY.get_sample_value("mer_items_listed_total") is None


def test_timed_observes_even_when_the_block_raises_and_checks_the_stage() -> None:
    metrics = JobMetrics()
    with pytest.raises(RuntimeError):
        with metrics.timed("write"):
            raise RuntimeError("database down")
    assert metrics.registry.get_sample_value("mer_stage_seconds_count", {"stage": "write"}) == 1
    with pytest.raises(ValueError):
        with metrics.timed("decoding"):
            pass
    with pytest.raises(ValueError):
        metrics.record_failed("nowhere")
    with pytest.raises(ValueError):
        metrics.record_tagged(["Q9"])
    assert set(STAGES) == {"list", "read", "features", "inference", "write"}


# --- Pushgateway ------------------------------------------------------------------------------------------------------


def test_push_adds_the_metrics_under_the_job(pushgateway: FakePushgateway) -> None:
    metrics = JobMetrics()
    run_a_small_job(metrics)
    assert metrics.push(pushgateway.url) is True

    [(method, path, body)] = pushgateway.pushes
    assert (method, path) == ("POST", "/metrics/job/mer_tag")  # POST = push-add: other groups' metrics stay
    got = samples(body)
    assert got[("mer_items_tagged_total", ())] == 3
    assert got[("mer_run_last_success_timestamp_seconds", ())] == 1_700_000_000.0


def test_a_failed_run_does_not_overwrite_the_last_success_time(pushgateway: FakePushgateway) -> None:
    metrics = JobMetrics()
    run_a_small_job(metrics, success=False)
    assert metrics.push(pushgateway.address, job="nightly")  # host:port, as --pushgateway takes it
    [(_, path, body)] = pushgateway.pushes
    assert path == "/metrics/job/nightly"
    names = {name for name, _ in samples(body)}
    assert "mer_run_last_success_timestamp_seconds" not in names
    assert samples(body)[("mer_run_failed", ())] == 1


def test_heartbeats_push_alone_and_the_final_push_ends_them(pushgateway: FakePushgateway) -> None:
    url, received = pushgateway.url, pushgateway.pushes
    metrics = JobMetrics()
    metrics.heartbeat(now=1_699_999_900.0)
    assert metrics.push_heartbeat(url)
    run_a_small_job(metrics)  # finishes at 1_700_000_000
    assert metrics.push(url)

    (beat_method, beat_path, beat), (_, _, final) = received
    # The heartbeat alone, by push-add: the last run's totals in the Pushgateway are left as they are.
    assert (beat_method, beat_path) == ("POST", "/metrics/job/mer_tag")
    assert samples(beat) == {("mer_run_heartbeat_timestamp_seconds", ()): 1_699_999_900.0}
    # The final push: the heartbeat equals the finish time, so a finished run never looks like a silent one.
    got = samples(final)
    assert got[("mer_run_heartbeat_timestamp_seconds", ())] == got[("mer_run_last_finish_timestamp_seconds", ())]


def test_an_unreachable_gateway_warns_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics = JobMetrics()
    with caplog.at_level(logging.WARNING, logger="mer.tagging.metrics"):
        assert metrics.push(f"http://ops:s3cret@127.0.0.1:{port}", timeout=2) is False
    assert "could not push metrics" in caplog.text
    assert "s3cret" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="mer.tagging.metrics"):
        caplog.clear()
        assert metrics.push_heartbeat(f"http://127.0.0.1:{port}", timeout=2) is False
        assert metrics.push_heartbeat(f"http://127.0.0.1:{port}", timeout=2) is False
    assert caplog.text.count("could not push the heartbeat") == 1  # once a run, not every beat
