import importlib.util
import json
import logging
import platform
import sys
from pathlib import Path

import httpx
import pytest
from halo_telemetry import sample_all
from halo_telemetry.samplers import sample_amd, sample_cpu, sample_mlx, sample_nvidia
from halo_telemetry.setup import JsonFormatter, setup
from opentelemetry import trace


def test_cpu_sampler_reads_real_values() -> None:
    (cpu,) = sample_cpu()
    assert cpu.kind == "cpu" and cpu.memory_total_bytes and cpu.memory_total_bytes > cpu.memory_used_bytes > 0


def _host_devices(kind: str) -> int:
    """How many devices of ``kind`` this host exposes to the sampler's library, found without that library:
    NVML sees the /dev/nvidiaN nodes, amdsmi the AMD (vendor 0x1002) render nodes, MLX one Apple GPU."""
    if kind == "nvidia":
        return len(list(Path("/dev").glob("nvidia[0-9]*"))) if importlib.util.find_spec("pynvml") else 0
    if kind == "amd":
        if not importlib.util.find_spec("amdsmi"):
            return 0
        return sum(v.read_text().strip() == "0x1002" for v in Path("/sys/class/drm").glob("renderD*/device/vendor"))
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    return int(apple and importlib.util.find_spec("mlx") is not None)


def test_samplers_report_the_hosts_devices_and_absent_ones_as_absent_not_zero() -> None:
    # A device the host does not have (or whose library is missing) is reported as nothing, never as zeros.
    kinds = ["cpu"]
    for kind, sampler in (("nvidia", sample_nvidia), ("amd", sample_amd), ("mlx", sample_mlx)):
        got = sampler()
        assert len(got) == _host_devices(kind), (kind, got)
        assert all(s.kind == kind and s.memory_total_bytes != 0 for s in got), got
        kinds += [kind] * len(got)
    assert [s.kind for s in sample_all()] == kinds


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


def test_metal_utilization_is_read_from_ioreg_performance_statistics() -> None:
    """The parser on the shape ``ioreg -r -d 1 -w 0 -c IOAccelerator`` prints on Apple silicon (one line of
    PerformanceStatistics per GPU); the call itself runs on macOS only (no macOS in CI)."""
    from halo_telemetry.samplers import parse_ioreg_utilization

    line = ('    "PerformanceStatistics" = {"In use system memory"=1207959552,"Renderer Utilization %"=31,'
            '"Device Utilization %"=37,"Tiler Utilization %"=12}')
    assert parse_ioreg_utilization(f'+-o AGXAcceleratorG13X  <class AGXAcceleratorG13X>\n{line}\n') == 0.37
    assert parse_ioreg_utilization('"PerformanceStatistics" = {"In use system memory"=0}') is None


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS reads the real GPU's utilisation")
def test_no_metal_utilization_off_macos() -> None:
    from halo_telemetry.samplers import metal_utilization

    assert metal_utilization() is None
