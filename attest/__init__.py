"""Prover side: measurement, attestation backends, the training wrapper and defenses."""
