"""The verifier library: pure logic, usable without NATS (the service wraps it).

Start with :class:`~halo_verifier_sandbox.core.engine.VerifierEngine`; write verifiers with
:class:`~halo_verifier_sandbox.core.base.Verifier` and
:func:`~halo_verifier_sandbox.core.registry.register_verifier`.
"""
