"""tsplit: A/B and shadow testing of ML models in production.

This package holds what both planes share: the etcd client and key layout, the resource
model, the error table, settings helpers, the generated stubs (``tsplit.v1``,
``tsplit.inference``) and the operator CLI.
"""


def package_version() -> str:
    """The installed tsplit version ("0" when run from a tree that is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("tsplit")
    except metadata.PackageNotFoundError:
        return "0"
