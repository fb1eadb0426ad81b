import json
import logging

import httpx
from halo_telemetry import sample_all
from halo_telemetry.samplers import sample_amd, sample_cpu, sample_mlx, sample_nvidia
from halo_telemetry.setup import JsonFormatter, setup
from opentelemetry import trace


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


def test_spans_are_exported_over_otlp_when_the_endpoint_is_set(tmp_path) -> None:  # noqa: ANN001
    """A real OTLP/HTTP exporter in a child process posts to a local collector stand-in."""
    import os
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[tuple[str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, len(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = (
        "from halo_telemetry import setup\n"
        "t = setup('otlp-test', metrics_port=None)\n"
        "with t.tracer.start_as_current_span('work'): pass\n"
        "t.shutdown()\n"
    )
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert received and received[0][0] == "/v1/traces" and received[0][1] > 0
