"""Table tests of cpu and memory quantities (Kubernetes rules, as Cortex uses them)."""
from __future__ import annotations

import pytest

from cortexd.config.quantities import parse_cpu, parse_gpu, parse_mem


@pytest.mark.parametrize(
    ("value", "cores"),
    [
        ("200m", 0.2),
        ("1", 1.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("1.5", 1.5),
        ("2500m", 2.5),
        ("1m", 0.001),
        (" 2 ", 2.0),
        (2, 2.0),
        (0.5, 0.5),
        (1, 1.0),
    ],
)
def test_parse_cpu_accepts(value: object, cores: float) -> None:
    assert parse_cpu(value) == pytest.approx(cores)
    assert isinstance(parse_cpu(value), float)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "must be > 0 cores"),
        ("0m", "must be > 0 cores"),
        (0, "must be > 0 cores"),
        (-1, "must be > 0 cores"),
        (float("inf"), "must be > 0 cores"),
        (float("nan"), "must be > 0 cores"),
        ("-1", 'got "-1"'),
        ("abc", 'got "abc"'),
        ("", 'got ""'),
        ("200M", '"m" is milli and lowercase'),
        ("1Gi", 'got "1Gi"'),
        ("1 cpu", 'got "1 cpu"'),
        (True, "got a boolean (true)"),
        (None, "got null"),
        ([1], "got a list"),
    ],
)
def test_parse_cpu_rejects_with_what_is_accepted(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cpu(value)
    message = str(info.value)
    assert fragment in message
    if "must be > 0" not in message:
        assert '"200m" = 0.2 cores' in message   # says what is accepted


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (128974848, 128974848),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("129E6", 129_000_000),
        ("1e3", 1000),
        ("129M", 129_000_000),
        ("123Mi", 123 * 2**20),
        ("1G", 10**9),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("512Mi", 512 * 2**20),
        ("1k", 1000),
        ("1K", 1000),          # Cortex's docs write K
        ("1Ki", 1024),
        ("2T", 2 * 10**12),
        ("1Ti", 2**40),
        ("1P", 10**15),
        ("1Pi", 2**50),
        ("1E", 10**18),
        ("1Ei", 2**60),
        ("0.5", 1),            # fractional bytes round up, as in Kubernetes
        ("1e-3", 1),
        ("+1M", 10**6),
        (1.5e9, 1_500_000_000),
        (" 1G ", 10**9),
    ],
)
def test_parse_mem_accepts(value: object, size: int) -> None:
    assert parse_mem(value) == size
    assert type(parse_mem(value)) is int


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("512m", 'did you mean "512M" or "512Mi"?'),   # milli-bytes: Kubernetes would take 0.512 bytes
        ("512u", "1000000 of a byte"),
        ("1g", 'did you mean "1G" or "1Gi"?'),
        ("1GB", 'did you mean "1G" or "1Gi"?'),
        ("1mb", 'did you mean "1M" or "1Mi"?'),
        ("1gi", 'did you mean "1Gi"?'),
        ("1MiB", 'did you mean "1Mi"?'),
        ("100b", 'write plain bytes: "100"'),
        ("1X", 'unknown memory suffix "X"'),
        ("0", "must be > 0 bytes"),
        ("0Gi", "must be > 0 bytes"),
        ("-1G", "must be > 0 bytes"),
        (0, "must be > 0 bytes"),
        (-5, "must be > 0 bytes"),
        (float("nan"), "must be > 0 bytes"),
        ("1e99999999", "out of range"),
        ("10Ei", "must be at most"),
        (2**64, "must be at most"),
        ("G", 'got "G"'),
        ("1 G", 'got "1 G"'),
        ("", 'got ""'),
        (True, "got a boolean (true)"),
        (None, "got null"),
        ({"a": 1}, "got a mapping"),
    ],
)
def test_parse_mem_rejects_with_what_is_accepted(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_mem(value)
    message = str(info.value)
    assert fragment in message
    if "must be" not in message:
        assert "Ki Mi Gi Ti Pi Ei (powers of 1024)" in message   # says what is accepted


@pytest.mark.parametrize("value, gpus", [(0, 0.0), (1, 1.0), (2, 2.0), (1.0, 1.0), (4.0, 4.0), (0.5, 0.5), (0.25, 0.25),
                                         (0.1, 0.1), (0.999, 0.999)])
def test_parse_gpu_accepts_whole_gpus_and_shares_of_one(value: object, gpus: float) -> None:
    assert parse_gpu(value) == gpus
    assert isinstance(parse_gpu(value), float)


@pytest.mark.parametrize(
    "value, fragment",
    [
        (1.5, "1.5 is neither a whole number of GPUs nor a share of one; use 1 or 2 GPUs, or a share below 1"),
        (2.25, "use 2 or 3 GPUs"),
        (-1, "must be >= 0 GPUs, got -1"),
        (float("inf"), "must be >= 0 GPUs"),
        ("1", 'got "1"'),
        ("0.5", "a share of one GPU as a number below 1 (0.25, 0.5)"),
        (True, "got a boolean (true)"),
        (None, "got null"),
    ],
)
def test_parse_gpu_rejects_with_what_is_accepted(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_gpu(value)
    assert fragment in str(info.value)
