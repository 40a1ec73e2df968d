"""tsplit: A/B and shadow testing of ML models in production.

This package holds what both planes share: the etcd client and key layout, the resource
model, the error table, settings helpers, the generated stubs (``tsplit.v1``,
``tsplit.inference``) and the operator CLI.
"""
