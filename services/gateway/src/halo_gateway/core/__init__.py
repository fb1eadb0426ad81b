"""The gateway's own logic, tested without HTTP or NATS: security (exposure, tokens, hosts, content types),
the OpenAPI document, and the job policy (code execution, path confinement, preflight)."""
