import json
import logging

import httpx
from opentelemetry import trace

from halo_telemetry import sample_all
from halo_telemetry.samplers import sample_amd, sample_cpu, sample_mlx, sample_nvidia
from halo_telemetry.setup import JsonFormatter, setup


def test_cpu_sampler_reads_real_values() -> None:
    (cpu,) = sample_cpu()
    assert cpu.kind == "cpu" and cpu.memory_total_bytes and cpu.memory_total_bytes > cpu.memory_used_bytes > 0


def test_absent_accelerators_are_absent_not_zero() -> None:
    # No NVIDIA/AMD/Metal device here: the samplers report nothing rather than zeros.
    assert sample_nvidia() == [] and sample_amd() == [] and sample_mlx() == []
    assert [s.kind for s in sample_all()] == ["cpu"]


def test_metrics_endpoint_serves_halo_metrics() -> None:
    tele = setup("test-svc", metrics_port=0, json_logs=True)
    try:
        body = httpx.get(tele.metrics_url).text
        assert "halo_service_start_time_seconds" in body
        assert 'halo_accelerator_memory_used_bytes{device="0",kind="cpu"}' in body
        # Unreadable values are omitted: there is no power reading for the CPU here.
        assert "halo_accelerator_power_watts{" not in body
    finally:
        tele.shutdown()


def test_json_log_lines_carry_trace_id() -> None:
    fmt = JsonFormatter("svc")
    tracer = trace.get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        line = fmt.format(logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("w",), None))
    out = json.loads(line)
    assert out["msg"] == "hello w" and out["service"] == "svc" and out["level"] == "info"
    ctx = span.get_span_context()
    if ctx.is_valid:  # a real SDK provider is installed by setup() in this process
        assert out["trace_id"] == f"{ctx.trace_id:032x}"
