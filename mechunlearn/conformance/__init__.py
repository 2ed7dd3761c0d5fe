"""Conformance checks for a model: hooks, residual identities, parity with plain
``transformers``, interventions, cached decoding, weight edits. ``doctor`` runs them all."""
