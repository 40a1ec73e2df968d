//! tsplit's router hot path (SPEC section 5): the gRPC data plane that dataplane/server.py
//! starts, hands routing snapshots to, and reads counters from (`py`, the PyO3 face).
//!
//! - `serve`: runtimes (one current-thread tokio runtime per thread), SO_REUSEPORT
//!   listeners, the HTTP/2 server and its graceful stop.
//! - `dispatch`: one request from its path to its answer; `body`: answers relayed and
//!   counted; `backends`: pooled HTTP/2 connections to the model servers.
//! - `table`: the immutable routing snapshot and the variant choice by slot.
//! - `wire`: the protobuf scan and rewrite; `grpc`: framing, status, deadlines.
//! - `mirror`: shadow copies, bounded in flight, and their pairs scored (`compare`).
//! - `stats`: the per-variant counters; `health`, `reflection`: the gRPC services.
//! - `oip`: the v2 messages; `compare`: shadow pairs scored; `json_infer`: v2 REST JSON to
//!   and from ModelInfer; `auth`: `--auth jwt` token verification; `rest`: the v2 REST API;
//!   `http_errors`: hyper's own HTTP/1.1 refusals as v2 error objects.

/// Every request allocates (headers, bodies, tasks) on its runtime thread and frees on the
/// same or another: mimalloc's per-thread heaps cost far less per call than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod auth;
pub mod backends;
pub mod body;
pub mod compare;
pub mod dispatch;
pub mod grpc;
pub mod h1;
pub mod health;
pub mod http_errors;
pub mod json_infer;
pub mod mirror;
pub mod oip;
pub mod reflection;
pub mod rest;
pub mod serve;
pub mod stats;
pub mod table;
pub mod wire;

#[cfg(feature = "python")]
mod py;

use std::sync::Arc;

/// Apply a full snapshot (JSON of table::SnapshotSpec); the problems found.
pub fn swap_table(shared: &serve::Shared, snapshot: &str) -> Result<Vec<String>, String> {
    let spec: table::SnapshotSpec = serde_json::from_str(snapshot).map_err(|e| format!("bad snapshot: {e}"))?;
    let (table, problems) = table::Table::from_snapshot(spec, &shared.registry);
    shared.retain_backends(&table);
    shared.table.store(Some(Arc::new(table)));
    shared.update_serving();
    Ok(problems)
}

/// Apply changes (JSON of table::ChangesSpec) to the current table; the problems found.
/// Before the first full snapshot there is nothing to change: an error.
pub fn apply_changes(shared: &serve::Shared, changes: &str) -> Result<Vec<String>, String> {
    let spec: table::ChangesSpec = serde_json::from_str(changes).map_err(|e| format!("bad changes: {e}"))?;
    let current = shared.table.load_full().ok_or("no full snapshot has been applied yet")?;
    let changed: Vec<String> = spec.remove.iter().cloned().chain(spec.upsert.iter().map(|r| r.slug.clone())).collect();
    let (table, problems) = current.with_changes(spec, &shared.registry);
    // Pools are dropped only when a changed route stopped naming an endpoint (a traffic
    // change keeps them all: no walk over every route).
    let dropped = changed.iter().any(|slug| {
        current.lookup(slug).is_some_and(|old| {
            let new = table.lookup(slug);
            old.variants.iter().any(|v| !new.is_some_and(|n| n.variants.iter().any(|w| w.endpoint == v.endpoint)))
        })
    });
    if dropped {
        shared.retain_backends(&table);
    }
    shared.table.store(Some(Arc::new(table)));
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(slug: &str, endpoints: &[&str]) -> serde_json::Value {
        let names: Vec<String> =
            (0..endpoints.len()).map(|i| if i == 0 { "champion".into() } else { format!("ch_{i}") }).collect();
        let share = 10_000 / endpoints.len() as u32;
        serde_json::json!({
            "slug": slug, "cache_version": 1, "shadow_mode": false,
            "variants": endpoints.iter().zip(&names).map(|(e, n)| serde_json::json!({
                "name": n, "model_id": format!("mod_{n}"), "endpoint": e, "model_name": n, "model_version": ""}))
                .collect::<Vec<_>>(),
            "allocation": names.iter().enumerate().map(|(i, n)| serde_json::json!({
                "variant": n, "start": i as u32 * share,
                "end": if i + 1 == names.len() { 10_000 } else { (i as u32 + 1) * share }}))
                .collect::<Vec<_>>(),
        })
    }

    fn pools(shared: &serve::Shared) -> Vec<Vec<String>> {
        shared.backends.iter().map(|b| b.addresses().iter().map(|a| a.to_string()).collect()).collect()
    }

    #[test]
    fn a_new_table_drops_the_pools_of_endpoints_no_route_names() {
        let config: serve::Config = serde_json::from_str(r#"{"host": "127.0.0.1", "threads": 2}"#).unwrap();
        let mut server = serve::Server::start(config).unwrap();
        let shared = server.shared.clone();
        let snapshot = serde_json::json!({"revision": 1, "routes": [
            route("dep_a", &["127.0.0.1:1", "127.0.0.1:2"]), route("dep_b", &["127.0.0.1:3"])]});
        assert!(swap_table(&shared, &snapshot.to_string()).unwrap().is_empty());
        for pool in &shared.backends {
            for address in ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"] {
                pool.endpoint(&Arc::from(address));
            }
        }
        // A change that keeps every endpoint keeps every pool, and one that removes a route
        // and a challenger drops what no route names any more.
        let same = serde_json::json!({"revision": 2, "upsert": [route("dep_b", &["127.0.0.1:3"])], "remove": []});
        apply_changes(&shared, &same.to_string()).unwrap();
        assert_eq!(pools(&shared)[0].len(), 4);
        let change =
            serde_json::json!({"revision": 3, "upsert": [route("dep_a", &["127.0.0.1:1"])], "remove": ["dep_b"]});
        apply_changes(&shared, &change.to_string()).unwrap();
        assert_eq!(pools(&shared), vec![vec!["127.0.0.1:1".to_string()]; 2]);
        // A full snapshot keeps only its own endpoints.
        let full = serde_json::json!({"revision": 4, "routes": [route("dep_c", &["127.0.0.1:5"])]});
        swap_table(&shared, &full.to_string()).unwrap();
        assert_eq!(pools(&shared), vec![Vec::<String>::new(); 2]);
        server.stop(std::time::Duration::ZERO);
    }
}
