"""HEALTHCHECK of every Halo Forge image: exit 0 when this container's service is healthy.

Checks, with the standard library only (it runs every 30 s; importing the service would be slow):

* every service: its Prometheus endpoint ``http://127.0.0.1:$HALO_<SVC>_METRICS_PORT/metrics``
  answers (the entrypoint fixes the port, 9400 by default);
* the gateway also: ``GET /health`` on ``HALO_GATEWAY_PORT`` answers ``"status": "ok"``, which
  means it is connected to NATS.

The service name comes from ``HALO_SERVICE`` (set by the image), so one script serves all images.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def main() -> int:
    svc = os.environ.get("HALO_SERVICE", "")
    if not svc:
        print("HALO_SERVICE is not set", file=sys.stderr)
        return 1
    prefix = "HALO_" + svc.upper().replace("-", "_") + "_"
    port = os.environ.get(prefix + "METRICS_PORT") or os.environ.get("HALO_CONTAINER_METRICS_PORT", "9400")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:  # noqa: S310 - loopback only
            if resp.status != 200:
                print(f"/metrics answered {resp.status}", file=sys.stderr)
                return 1
        if svc == "gateway":
            gw_port = os.environ.get("HALO_GATEWAY_PORT", "8420")
            with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/health", timeout=3) as resp:  # noqa: S310
                status = json.load(resp).get("status")
                if status != "ok":
                    print(f"gateway health is {status!r}", file=sys.stderr)
                    return 1
    except OSError as exc:
        print(f"{svc} unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
