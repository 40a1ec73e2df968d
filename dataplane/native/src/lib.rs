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

pub mod auth;
pub mod backends;
pub mod body;
pub mod compare;
pub mod dispatch;
pub mod grpc;
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
    shared.table.store(Some(Arc::new(table)));
    shared.update_serving();
    Ok(problems)
}

/// Apply changes (JSON of table::ChangesSpec) to the current table; the problems found.
/// Before the first full snapshot there is nothing to change: an error.
pub fn apply_changes(shared: &serve::Shared, changes: &str) -> Result<Vec<String>, String> {
    let spec: table::ChangesSpec = serde_json::from_str(changes).map_err(|e| format!("bad changes: {e}"))?;
    let current = shared.table.load_full().ok_or("no full snapshot has been applied yet")?;
    let (table, problems) = current.with_changes(spec, &shared.registry);
    shared.table.store(Some(Arc::new(table)));
    Ok(problems)
}
