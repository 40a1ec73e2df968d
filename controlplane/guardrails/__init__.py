"""Guardrails (SPEC 5a): the policy, the always-valid tests and the judge that acts on them."""
