"""The small base every service uses. Subclass :class:`Service`, implement ``setup``, and give
the package a ``__main__`` that calls ``MyService.main()``."""

from halo_runtime.service import Service, run_service

__all__ = ["Service", "run_service"]
