"""The router's native core (dataplane/native, Rust): see dataplane/native/src/lib.rs."""

class Router:
    """A running native router: listeners on `port`, one runtime per thread."""

    @property
    def port(self) -> int: ...
    def swap_table(self, snapshot: str) -> list[str]:
        """Replace the routing table with a full snapshot (JSON); the problems found."""
    def apply_changes(self, changes: str) -> list[str]:
        """Apply {"revision", "upsert": [route...], "remove": [slug...]} (JSON)."""
    def counters(self) -> str:
        """{slug: {variant: counters}} as JSON (dataplane.stats.VariantStats.to_json + forced)."""
    def mirrors_inflight(self) -> int:
        """Shadow copies in flight (sent, their pairs not scored yet), in the whole router."""
    def mirrors_compared(self) -> tuple[int, int]:
        """Shadow pairs compared: (on a runtime thread, on the comparison threads)."""
    def serving(self) -> bool:
        """Whether grpc.health.v1 answers SERVING."""
    def stop(self, grace_s: float) -> None:
        """Stop accepting; calls in flight get grace_s seconds. Idempotent."""

def start(config: str) -> Router:
    """Start serving with a JSON config (dataplane/native/src/serve.rs, Config). OSError when
    the address cannot be bound."""
