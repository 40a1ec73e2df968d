"""The etcd key layout (SPEC section 6). Values are JSON; ops scripts read them as is."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/tsplit"


@dataclass(frozen=True)
class Layout:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ValueError(f"etcd prefix {self.prefix!r} must start with '/' and not end with '/'")

    @property
    def models(self) -> str:
        return f"{self.prefix}/models/"

    @property
    def deployments(self) -> str:
        return f"{self.prefix}/deployments/"

    @property
    def routers(self) -> str:
        return f"{self.prefix}/routers/"

    def model(self, model_id: str) -> str:
        return f"{self.models}{model_id}"

    def deployment(self, slug: str) -> str:
        return f"{self.deployments}{slug}"

    def history(self, slug: str) -> str:
        """Prefix of one deployment's versions."""
        return f"{self.prefix}/history/{slug}/"

    def history_version(self, slug: str, cache_version: int) -> str:
        return f"{self.history(slug)}{cache_version:010d}"

    def router(self, router_id: str) -> str:
        return f"{self.routers}{router_id}"

    def request(self, scope: str, request_id: str) -> str:
        """Idempotency record: the result a request_id produced, within a scope
        (a deployment slug, or "models")."""
        return f"{self.prefix}/requests/{scope}/{request_id}"

    def tombstone(self, slug: str) -> str:
        """Marks a deleted deployment so its slug is never reused."""
        return f"{self.prefix}/deleted/{slug}"

    def leader(self, role: str) -> str:
        """Lease-bound: the replica that holds a role (e.g. "guardrails")."""
        return f"{self.prefix}/leader/{role}"

    @property
    def guardrail_states(self) -> str:
        return f"{self.prefix}/guardrails/"

    def guardrail_state(self, slug: str) -> str:
        """Lease-bound (the judge's lease): the guardrail judge's view of a deployment."""
        return f"{self.guardrail_states}{slug}"

    def slug_of(self, key: str) -> str:
        """The last path segment of a key: a slug, model id or router id."""
        return key.rsplit("/", 1)[-1]
