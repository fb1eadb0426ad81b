"""Pure rollout logic (backends, model cache, job runner, reward workbench), testable without NATS."""
