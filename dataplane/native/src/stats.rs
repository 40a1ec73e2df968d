//! Per deployment and variant counters (SPEC section 4), atomics bumped on the request
//! path with no lock and read by Python about once a second (`counters()`), in the shape
//! of dataplane.stats.VariantStats.to_json plus `forced`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::grpc::Code;

/// Upper edges of the latency buckets (SPEC section 4), ms; one more bucket counts
/// everything slower. The Python side may pass finer edges (tsplit.status's), a superset.
pub const LATENCY_BUCKETS_MS: [f64; 12] =
    [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0];

/// Bucket edges in microseconds.
pub type Edges = Arc<[u64]>;

pub fn edges_from_ms(ms: &[f64]) -> Edges {
    let mut out: Vec<u64> = ms.iter().map(|m| (m * 1000.0).round() as u64).collect();
    out.sort_unstable();
    out.into()
}

/// The bucket of a latency: the first edge it does not exceed (an answer of exactly 5 ms
/// is in the 5 ms bucket), else the overflow bucket.
pub fn latency_bucket(edges: &[u64], latency: Duration) -> usize {
    let micros = latency.as_micros() as u64;
    edges.partition_point(|edge| *edge < micros)
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn buckets(edges: &Edges) -> Box<[AtomicU64]> {
    (0..=edges.len()).map(|_| AtomicU64::new(0)).collect()
}

/// The counters of one variant of one deployment. Cumulative; kept when a snapshot
/// changes the variant's model (they are the variant's).
pub struct Counters {
    edges: Edges,
    pub model_id: Mutex<String>,
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub errors_by_code: [AtomicU64; 17],
    pub latency_us_sum: AtomicU64,
    pub latency_buckets: Box<[AtomicU64]>,
    pub failovers: AtomicU64,
    /// Answers to requests forced to this variant with x-tsplit-variant: counted here
    /// only (the guardrails read the randomized counters above).
    pub forced: AtomicU64,
    pub forced_errors: AtomicU64,
    pub mirrored: AtomicU64,
    pub mirror_dropped: AtomicU64,
    pub mirror_errors: AtomicU64,
    pub mirror_latency_us_sum: AtomicU64,
    /// Shadow copies answered (errors included) and their latencies.
    pub mirror_answers: AtomicU64,
    pub mirror_latency_buckets: Box<[AtomicU64]>,
    pub compared: AtomicU64,
    pub exact_matches: AtomicU64,
    pub label_agree: AtomicU64,
    pub label_total: AtomicU64,
    /// Sum of |diff|: the bits of an f64 (add_abs_diff).
    pub abs_diff_sum_bits: AtomicU64,
    pub abs_diff_count: AtomicU64,
}

impl Counters {
    fn new(model_id: &str, edges: &Edges) -> Counters {
        Counters {
            edges: edges.clone(),
            model_id: Mutex::new(model_id.to_string()),
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            errors_by_code: counters(),
            latency_us_sum: AtomicU64::new(0),
            latency_buckets: buckets(edges),
            failovers: AtomicU64::new(0),
            forced: AtomicU64::new(0),
            forced_errors: AtomicU64::new(0),
            mirrored: AtomicU64::new(0),
            mirror_dropped: AtomicU64::new(0),
            mirror_errors: AtomicU64::new(0),
            mirror_latency_us_sum: AtomicU64::new(0),
            mirror_answers: AtomicU64::new(0),
            mirror_latency_buckets: buckets(edges),
            compared: AtomicU64::new(0),
            exact_matches: AtomicU64::new(0),
            label_agree: AtomicU64::new(0),
            label_total: AtomicU64::new(0),
            abs_diff_sum_bits: AtomicU64::new(0),
            abs_diff_count: AtomicU64::new(0),
        }
    }

    /// One answer given to a user.
    pub fn answered(&self, latency: Duration, code: Code) {
        self.requests.fetch_add(1, Relaxed);
        self.latency_us_sum.fetch_add(latency.as_micros() as u64, Relaxed);
        self.latency_buckets[latency_bucket(&self.edges, latency)].fetch_add(1, Relaxed);
        if code == Code::OK {
            self.ok.fetch_add(1, Relaxed);
        } else {
            self.errors.fetch_add(1, Relaxed);
            self.errors_by_code[(code.0 as usize).min(16)].fetch_add(1, Relaxed);
        }
    }

    /// Add to the sum of |diff| (an f64 in an atomic: compare-and-swap of its bits).
    pub fn add_abs_diff(&self, value: f64) {
        let add = |bits: u64| Some((f64::from_bits(bits) + value).to_bits());
        let _ = self.abs_diff_sum_bits.fetch_update(Relaxed, Relaxed, add);
    }

    /// One answer to a request that forced this variant.
    pub fn forced_answered(&self, code: Code) {
        self.forced.fetch_add(1, Relaxed);
        if code != Code::OK {
            self.forced_errors.fetch_add(1, Relaxed);
        }
    }

    /// One shadow copy answered (ok or not) after `latency`.
    pub fn mirror_answered(&self, latency: Duration, ok: bool) {
        self.mirror_answers.fetch_add(1, Relaxed);
        self.mirror_latency_us_sum.fetch_add(latency.as_micros() as u64, Relaxed);
        self.mirror_latency_buckets[latency_bucket(&self.edges, latency)].fetch_add(1, Relaxed);
        if !ok {
            self.mirror_errors.fetch_add(1, Relaxed);
        }
    }

    /// Nothing counted yet (such rows are left out of the reading, as Python's are made
    /// on first use).
    fn is_untouched(&self) -> bool {
        let zero = |a: &AtomicU64| a.load(Relaxed) == 0;
        [&self.requests, &self.forced, &self.failovers, &self.mirrored, &self.mirror_dropped, &self.mirror_answers]
            .into_iter()
            .all(zero)
    }

    fn to_json(&self) -> Value {
        let get = |a: &AtomicU64| a.load(Relaxed);
        let mut by_code = Map::new();
        for (i, c) in self.errors_by_code.iter().enumerate() {
            let n = get(c);
            if n > 0 {
                by_code.insert(Code(i as u16).name().to_string(), json!(n));
            }
        }
        let model_id = self.model_id.lock().map(|m| m.clone()).unwrap_or_default();
        json!({
            "model_id": model_id,
            "requests": get(&self.requests),
            "ok": get(&self.ok),
            "errors": get(&self.errors),
            "errors_by_code": by_code,
            "latency_ms_sum": get(&self.latency_us_sum) as f64 / 1000.0,
            "latency_buckets": self.latency_buckets.iter().map(get).collect::<Vec<_>>(),
            "failovers": get(&self.failovers),
            "forced": get(&self.forced),
            "forced_errors": get(&self.forced_errors),
            "mirror_answers": get(&self.mirror_answers),
            "mirror_latency_buckets": self.mirror_latency_buckets.iter().map(get).collect::<Vec<_>>(),
            "mirrored": get(&self.mirrored),
            "mirror_dropped": get(&self.mirror_dropped),
            "mirror_errors": get(&self.mirror_errors),
            "mirror_latency_ms_sum": get(&self.mirror_latency_us_sum) as f64 / 1000.0,
            "compared": get(&self.compared),
            "exact_matches": get(&self.exact_matches),
            "label_agree": get(&self.label_agree),
            "label_total": get(&self.label_total),
            "abs_diff_sum": f64::from_bits(get(&self.abs_diff_sum_bits)),
            "abs_diff_count": get(&self.abs_diff_count),
        })
    }
}

/// Every variant's counters by slug then variant name: consulted when a snapshot is built
/// (so a variant keeps its counters) and when Python reads them, never per request.
pub struct CountersRegistry {
    rows: Mutex<HashMap<String, HashMap<String, Arc<Counters>>>>,
    edges: Edges,
}

impl Default for CountersRegistry {
    fn default() -> Self {
        CountersRegistry::new(&LATENCY_BUCKETS_MS)
    }
}

impl CountersRegistry {
    pub fn new(edges_ms: &[f64]) -> CountersRegistry {
        CountersRegistry { rows: Mutex::new(HashMap::new()), edges: edges_from_ms(edges_ms) }
    }

    pub fn get(&self, slug: &str, variant: &str, model_id: &str) -> Arc<Counters> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let variants = rows.entry(slug.to_string()).or_default();
        let row = variants.entry(variant.to_string()).or_insert_with(|| Arc::new(Counters::new(model_id, &self.edges)));
        if let Ok(mut m) = row.model_id.lock() {
            if *m != model_id {
                *m = model_id.to_string();
            }
        }
        row.clone()
    }

    /// Forget a deleted deployment's counters (a slug is never reused).
    pub fn forget(&self, slug: &str) {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).remove(slug);
    }

    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).retain(|slug, _| keep(slug));
    }

    /// {slug: {variant: counters}}: the "stats" part of the router record.
    pub fn to_json(&self) -> Value {
        type Rows = Vec<(String, Vec<(String, Arc<Counters>)>)>;
        let rows: Rows = {
            let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
            rows.iter()
                .map(|(slug, vs)| (slug.clone(), vs.iter().map(|(n, c)| (n.clone(), c.clone())).collect()))
                .collect()
        };
        let mut out = Map::new();
        for (slug, variants) in rows {
            let mut row = Map::new();
            for (name, counters) in variants {
                if !counters.is_untouched() {
                    row.insert(name, counters.to_json());
                }
            }
            if !row.is_empty() {
                out.insert(slug, Value::Object(row));
            }
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_their_upper_edge() {
        let edges = edges_from_ms(&LATENCY_BUCKETS_MS);
        assert_eq!(latency_bucket(&edges, Duration::from_micros(500)), 0);
        assert_eq!(latency_bucket(&edges, Duration::from_millis(1)), 0);
        assert_eq!(latency_bucket(&edges, Duration::from_micros(1001)), 1);
        assert_eq!(latency_bucket(&edges, Duration::from_millis(5000)), 11);
        assert_eq!(latency_bucket(&edges, Duration::from_millis(5001)), 12);
    }

    #[test]
    fn an_error_is_counted_by_its_code_name() {
        let registry = CountersRegistry::default();
        let c = registry.get("dep_a", "champion", "mod_1");
        c.answered(Duration::from_millis(3), Code::NOT_FOUND);
        c.answered(Duration::from_millis(3), Code::OK);
        let v = registry.to_json();
        let row = &v["dep_a"]["champion"];
        assert_eq!(row["requests"], 2);
        assert_eq!(row["errors_by_code"]["NOT_FOUND"], 1);
        assert_eq!(row["latency_buckets"][2], 2);
    }

    #[test]
    fn a_variant_keeps_its_counters_across_snapshots() {
        let registry = CountersRegistry::default();
        registry.get("dep_a", "ch_1", "mod_1").failovers.fetch_add(1, Relaxed);
        let again = registry.get("dep_a", "ch_1", "mod_2");
        assert_eq!(again.failovers.load(Relaxed), 1);
        assert_eq!(registry.to_json()["dep_a"]["ch_1"]["model_id"], "mod_2");
    }
}
