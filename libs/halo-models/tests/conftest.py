"""Fixtures for halo-models' own tests.

The repository's root conftest loads ``halo_models.pytest_plugin`` with ``pytest_plugins``; that
is not allowed in a nested conftest, so this one imports the same fixtures instead, which keeps
``pytest libs/halo-models/tests`` working on its own. Redefining them here is harmless when the
plugin is also loaded: the nearer definition wins and they are identical.
"""

from halo_models.pytest_plugin import (  # noqa: F401  (imported fixtures are used by name)
    tiny_cache_root,
    tiny_model_dir,
    tiny_qwen2_dir,
    tiny_seq_cls_dir,
)
