"""Root pytest configuration: offline always, shared fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["halo_testing.fixtures", "halo_testing.adapters", "halo_testing.browser"]
