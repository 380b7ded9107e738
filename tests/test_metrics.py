from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortexd.daemon.observe.metrics import (
    ApiMetricsState,
    GpuMetricsState,
    Metrics,
    MetricsState,
    ReplicaGpuMetricsState,
)


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of one render, keyed by (sample name, sorted labels)."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples
            samples[key] = sample.value
    return samples


def families(metrics: Metrics) -> dict[str, str]:
    body, _ = metrics.render()
    return {family.name: family.type for family in text_string_to_metric_families(body.decode())}


def test_request_counters_and_histograms() -> None:
    metrics = Metrics()
    metrics.request("iris", 200, 0.004, 0.0002)
    metrics.request("iris", 200, 0.020, 0.0)
    metrics.request("iris", 400, 0.001, 0.0)
    metrics.request("wine", 503, 0.0, 0.0)
    s = scrape(metrics)
    assert s[("cortexd_inference_requests_total", (("api", "iris"), ("code", "200")))] == 2
    assert s[("cortexd_inference_requests_total", (("api", "iris"), ("code", "400")))] == 1
    assert s[("cortexd_inference_requests_total", (("api", "wine"), ("code", "503")))] == 1

    duration = "cortexd_inference_request_duration_seconds"
    assert s[(duration + "_count", (("api", "iris"),))] == 3
    assert s[(duration + "_sum", (("api", "iris"),))] == pytest.approx(0.025)
    assert s[(duration + "_bucket", (("api", "iris"), ("le", "0.001")))] == 1
    assert s[(duration + "_bucket", (("api", "iris"), ("le", "0.005")))] == 2
    assert s[(duration + "_bucket", (("api", "iris"), ("le", "0.025")))] == 3
    assert s[(duration + "_bucket", (("api", "iris"), ("le", "+Inf")))] == 3

    queue = "cortexd_inference_queue_duration_seconds"
    assert s[(queue + "_count", (("api", "iris"),))] == 3
    assert s[(queue + "_bucket", (("api", "iris"), ("le", "0.0001")))] == 2
    assert s[(queue + "_bucket", (("api", "iris"), ("le", "0.0005")))] == 3
    assert s[(queue + "_count", (("api", "wine"),))] == 1
    assert not any(name.endswith("_created") for name, _ in s)

    types = families(metrics)
    assert types["cortexd_inference_requests"] == "counter"
    assert types[duration] == types[queue] == "histogram"


def test_gauges_come_from_the_provider_at_scrape_time() -> None:
    metrics = Metrics()
    readings = {"in_flight": 1}

    def provider() -> MetricsState:
        return MetricsState(
            apis=[
                ApiMetricsState(
                    name="iris", in_flight=readings["in_flight"], queued=3,
                    replicas={"ready": 2, "starting": 1}, restarts=4,
                    tracker={"model_type": "classification",
                             "total": {"counts": {"setosa": 5, "7": 2}}, "last_hour": {"counts": {"setosa": 1}}},
                ),
                ApiMetricsState(
                    name="price", replicas={"ready": 1},
                    tracker={"model_type": "regression",
                             "total": {"count": 3, "min": -1.0, "max": 2.5, "mean": 0.5},
                             "last_hour": {"count": 0, "min": None, "max": None, "mean": None}},
                ),
                ApiMetricsState(name="fresh", tracker={"model_type": "regression",
                                                       "total": {"count": 0, "min": None, "max": None, "mean": None},
                                                       "last_hour": {"count": 0, "min": None, "max": None,
                                                                     "mean": None}}),
            ],
            gpus=[GpuMetricsState(index=0, uuid="GPU-fake-0", memory_used=1024, memory_total=16 * 2**30,
                                  utilization=37.0, name="Fake GPU")],
            replica_gpus=[
                ReplicaGpuMetricsState("iris", "iris-1", 0, "GPU-fake-0", 0.5, 3 * 2**30, 6 * 2**30),
                ReplicaGpuMetricsState("price", "price-2", 0, "GPU-fake-0", 0.25, 2**30),
            ],
        )

    metrics.set_state_provider(provider)
    s = scrape(metrics)
    iris = (("api", "iris"),)
    assert s[("cortexd_inference_in_flight_requests", iris)] == 1
    assert s[("cortexd_inference_queued_requests", iris)] == 3
    assert s[("cortexd_replicas", (("api", "iris"), ("state", "ready")))] == 2
    assert s[("cortexd_replicas", (("api", "iris"), ("state", "starting")))] == 1
    assert s[("cortexd_replicas", (("api", "price"), ("state", "ready")))] == 1
    assert s[("cortexd_replica_restarts_total", iris)] == 4
    assert s[("cortexd_tracker_class_predictions_total", (("api", "iris"), ("class", "setosa")))] == 5
    assert s[("cortexd_tracker_class_predictions_total", (("api", "iris"), ("class", "7")))] == 2
    assert s[("cortexd_tracker_regression_predictions_total", (("api", "price"),))] == 3
    assert s[("cortexd_tracker_regression_value", (("api", "price"), ("stat", "min")))] == -1.0
    assert s[("cortexd_tracker_regression_value", (("api", "price"), ("stat", "max")))] == 2.5
    assert s[("cortexd_tracker_regression_value", (("api", "price"), ("stat", "mean")))] == 0.5
    assert s[("cortexd_tracker_regression_predictions_total", (("api", "fresh"),))] == 0
    assert not any(name == "cortexd_tracker_regression_value" and ("api", "fresh") in labels for name, labels in s)
    gpu = (("gpu", "0"), ("gpu_uuid", "GPU-fake-0"))
    assert s[("cortexd_gpu_memory_used_bytes", gpu)] == 1024
    assert s[("cortexd_gpu_memory_total_bytes", gpu)] == 16 * 2**30
    assert s[("cortexd_gpu_utilization", gpu)] == pytest.approx(0.37)
    iris_1 = (("api", "iris"), ("gpu", "0"), ("gpu_uuid", "GPU-fake-0"), ("replica", "iris-1"))
    price_2 = (("api", "price"), ("gpu", "0"), ("gpu_uuid", "GPU-fake-0"), ("replica", "price-2"))
    assert s[("cortexd_replica_gpu_memory_used_bytes", iris_1)] == 3 * 2**30
    assert s[("cortexd_replica_gpu_memory_limit_bytes", iris_1)] == 6 * 2**30
    assert s[("cortexd_replica_gpu_share", iris_1)] == 0.5
    assert s[("cortexd_replica_gpu_share", price_2)] == 0.25
    assert ("cortexd_replica_gpu_memory_limit_bytes", price_2) not in s  # no gpu_mem, no limit series

    readings["in_flight"] = 5      # read again at the next scrape, not cached
    assert scrape(metrics)[("cortexd_inference_in_flight_requests", iris)] == 5

    types = families(metrics)
    assert types["cortexd_replica_restarts"] == types["cortexd_tracker_class_predictions"] == "counter"
    assert types["cortexd_replicas"] == types["cortexd_gpu_utilization"] == "gauge"


def test_no_provider_and_a_failing_provider_leave_the_request_series(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    metrics.request("iris", 200, 0.01, 0.0)
    assert not any(name == "cortexd_replicas" for name, _ in scrape(metrics))

    def broken() -> MetricsState:
        raise RuntimeError("boom")

    metrics.set_state_provider(broken)
    with caplog.at_level(logging.ERROR, logger="cortexd.metrics"):
        s = scrape(metrics)
    assert s[("cortexd_inference_requests_total", (("api", "iris"), ("code", "200")))] == 1
    assert "state provider failed" in caplog.text


def test_forget_drops_the_api_series() -> None:
    metrics = Metrics()
    metrics.request("gone", 200, 0.01, 0.0)
    metrics.request("gone", 500, 0.01, 0.0)
    metrics.request("kept", 200, 0.01, 0.0)
    metrics.forget("gone")
    s = scrape(metrics)
    assert not any(("api", "gone") in labels for _, labels in s)
    assert s[("cortexd_inference_requests_total", (("api", "kept"), ("code", "200")))] == 1
    metrics.request("gone", 200, 0.01, 0.0)     # comes back from zero if re-added
    assert scrape(metrics)[("cortexd_inference_requests_total", (("api", "gone"), ("code", "200")))] == 1


def test_two_instances_do_not_share_series() -> None:
    first, second = Metrics(), Metrics()
    first.request("iris", 200, 0.01, 0.0)
    assert not any(("api", "iris") in labels for _, labels in scrape(second))


def test_batch_size_wait_and_trigger_series() -> None:
    metrics = Metrics()
    metrics.request("plain", 200, 0.001, 0.0)
    metrics.batch("iris", 8, "full", [0.0015] * 8)
    metrics.batch("iris", 3, "interval", [0.002, 0.0012, 0.0001])
    metrics.batch("iris", 1, "freed", [0.0])
    s = scrape(metrics)
    size = "cortexd_inference_batch_size"
    assert s[(size + "_count", (("api", "iris"),))] == 3
    assert s[(size + "_sum", (("api", "iris"),))] == 12
    assert s[(size + "_bucket", (("api", "iris"), ("le", "1.0")))] == 1
    assert s[(size + "_bucket", (("api", "iris"), ("le", "2.0")))] == 1
    assert s[(size + "_bucket", (("api", "iris"), ("le", "4.0")))] == 2
    assert s[(size + "_bucket", (("api", "iris"), ("le", "8.0")))] == 3
    wait = "cortexd_inference_batch_wait_seconds"
    assert s[(wait + "_count", (("api", "iris"),))] == 12  # one per request
    assert s[(wait + "_sum", (("api", "iris"),))] == pytest.approx(0.0015 * 8 + 0.0033)
    assert s[(wait + "_bucket", (("api", "iris"), ("le", "0.0001")))] == 2
    assert s[(wait + "_bucket", (("api", "iris"), ("le", "0.0025")))] == 12
    batches = "cortexd_inference_batches_total"
    assert {k[1][1][1]: v for k, v in s.items() if k[0] == batches} == {"full": 1, "interval": 1, "freed": 1}
    # an API that does not batch has no batch series
    assert not any(dict(labels).get("api") == "plain" for name, labels in s if name.startswith(size))
    types = families(metrics)
    assert types[size] == types[wait] == "histogram" and types["cortexd_inference_batches"] == "counter"
    metrics.forget("iris")
    assert not any(name.startswith(size) and dict(labels) for name, labels in scrape(metrics))
