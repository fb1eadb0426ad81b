"""verifier-sandbox's own logic (the verifiers themselves are the :mod:`halo_verifiers` library)."""
