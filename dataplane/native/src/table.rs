//! The routing snapshot the Python side builds (dataplane/routing.py's RoutingTable, as
//! JSON) and the variant choice by slot (SPEC section 5): one immutable `Table` per change,
//! swapped in atomically; requests only read it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use blake2::digest::{Update, VariableOutput};
use serde::Deserialize;

use crate::stats::{Counters, CountersRegistry};

pub const SLOTS: u32 = 10_000;
pub const CHAMPION: &str = "champion";

/// A request's slot for routing key `key` (SPEC section 5):
/// int.from_bytes(blake2b(slug + "\x00" + key, digest_size=8).digest(), "big") % 10000.
pub fn slot(slug: &str, key: &[u8]) -> u32 {
    let mut hasher = blake2::Blake2bVar::new(8).expect("8 is a valid BLAKE2b digest size");
    hasher.update(slug.as_bytes());
    hasher.update(b"\0");
    hasher.update(key);
    let mut digest = [0u8; 8];
    hasher.finalize_variable(&mut digest).expect("the buffer is the digest size");
    (u64::from_be_bytes(digest) % u64::from(SLOTS)) as u32
}

#[derive(Deserialize, Clone, Debug)]
pub struct VariantSpec {
    pub name: String,
    pub model_id: String,
    pub endpoint: String,
    pub model_name: String,
    #[serde(default)]
    pub model_version: String,
    /// The model's v2 REST host:port, when it has one (REST calls go there).
    #[serde(default)]
    pub http_endpoint: String,
}

#[derive(Deserialize, Clone, Debug)]
pub struct RangeSpec {
    pub variant: String,
    pub start: u32,
    pub end: u32,
}

#[derive(Deserialize, Clone, Debug)]
pub struct RouteSpec {
    pub slug: String,
    pub cache_version: u64,
    #[serde(default)]
    pub shadow_mode: bool,
    /// The champion first, then the active challengers.
    pub variants: Vec<VariantSpec>,
    pub allocation: Vec<RangeSpec>,
    /// The deployment's org (auth: a token of another org gets NOT_FOUND).
    #[serde(default)]
    pub org_id: String,
}

#[derive(Deserialize, Debug, Default)]
pub struct SnapshotSpec {
    pub revision: i64,
    pub routes: Vec<RouteSpec>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ChangesSpec {
    pub revision: i64,
    #[serde(default)]
    pub upsert: Vec<RouteSpec>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One variant of a deployment, with its counters (kept across snapshots by name).
pub struct Variant {
    pub name: String,
    pub model_id: String,
    pub endpoint: Arc<str>,
    pub model_name: String,
    pub model_version: String,
    pub http_endpoint: String,
    /// The bytes appended to a request for this variant's backend (wire::model_ref_suffix).
    pub suffix: Vec<u8>,
    pub counters: Arc<Counters>,
    /// What every answer it gives carries: tsplit-model-id, tsplit-variant and the
    /// deployment's tsplit-cache-version (SPEC section 5), made once per table.
    pub answer_headers: http::HeaderMap,
    /// "variant ch_x (model mod_y) of deployment dep_z": how the router's errors name its
    /// backend (never by its address).
    pub description: Arc<str>,
    /// Its REST infer path, `/v2/models/{model_name}[/versions/{model_version}]/infer`.
    pub rest_infer_path: String,
    /// The URI of a ModelInfer call to its gRPC endpoint (None: the endpoint is not a
    /// host:port, and every call to it fails as unreachable).
    pub infer_uri: Option<http::Uri>,
}

static MODEL_ID: http::HeaderName = http::HeaderName::from_static("tsplit-model-id");
static VARIANT: http::HeaderName = http::HeaderName::from_static("tsplit-variant");
static CACHE_VERSION: http::HeaderName = http::HeaderName::from_static("tsplit-cache-version");

/// The model's REST path for `action` ("" metadata, "ready", "infer").
pub fn rest_path(model_name: &str, model_version: &str, action: &str) -> String {
    let mut path = format!("/v2/models/{model_name}");
    if !model_version.is_empty() {
        path.push_str("/versions/");
        path.push_str(model_version);
    }
    if !action.is_empty() {
        path.push('/');
        path.push_str(action);
    }
    path
}

/// The URI of gRPC method `path` at `endpoint` (host:port).
pub fn grpc_uri(endpoint: &str, path: &str) -> Result<http::Uri, http::uri::InvalidUri> {
    format!("http://{endpoint}{path}").parse()
}

fn answer_headers(spec: &VariantSpec, cache_version: u64) -> http::HeaderMap {
    let mut h = http::HeaderMap::with_capacity(3);
    if let Ok(v) = http::HeaderValue::from_str(&spec.model_id) {
        h.insert(MODEL_ID.clone(), v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&spec.name) {
        h.insert(VARIANT.clone(), v);
    }
    h.insert(CACHE_VERSION.clone(), http::HeaderValue::from(cache_version));
    h
}

impl Variant {
    pub fn is_champion(&self) -> bool {
        self.name == CHAMPION
    }
}

pub struct Route {
    pub slug: String,
    pub cache_version: u64,
    pub shadow_mode: bool,
    pub org_id: String,
    /// variants[0] is the champion.
    pub variants: Vec<Arc<Variant>>,
    /// Sorted, non-overlapping (end, variant index) covering 0..SLOTS.
    ranges: Vec<(u32, usize)>,
}

impl Route {
    pub fn champion(&self) -> &Arc<Variant> {
        &self.variants[0]
    }

    pub fn variant(&self, name: &str) -> Option<&Arc<Variant>> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// The owner of a slot.
    pub fn owner(&self, slot: u32) -> &Arc<Variant> {
        let at = self.ranges.partition_point(|(end, _)| *end <= slot);
        &self.variants[self.ranges.get(at).map_or(0, |(_, i)| *i)]
    }

    /// The slot of a request: by its routing key, or uniformly random without one (an
    /// empty key counts as none).
    pub fn slot_of(&self, routing_key: Option<&[u8]>) -> u32 {
        match routing_key {
            Some(key) if !key.is_empty() => slot(&self.slug, key),
            _ => fastrand::u32(0..SLOTS),
        }
    }

    /// Who answers (split: the owner; shadow: the champion), and in shadow mode the
    /// challenger that gets a copy.
    pub fn choose(&self, slot: u32) -> (&Arc<Variant>, Option<&Arc<Variant>>) {
        let owner = self.owner(slot);
        if self.shadow_mode {
            let mirror = if owner.is_champion() { None } else { Some(owner) };
            (self.champion(), mirror)
        } else {
            (owner, None)
        }
    }

    fn build(spec: RouteSpec, registry: &CountersRegistry) -> Result<Route, String> {
        let slug = spec.slug;
        if spec.variants.first().map(|v| v.name.as_str()) != Some(CHAMPION) {
            return Err(format!("deployment {slug}: the first variant must be the champion"));
        }
        let variants: Vec<Arc<Variant>> = spec
            .variants
            .into_iter()
            .map(|v| {
                Arc::new(Variant {
                    answer_headers: answer_headers(&v, spec.cache_version),
                    description: Arc::from(format!("variant {} (model {}) of deployment {slug}", v.name, v.model_id)),
                    rest_infer_path: rest_path(&v.model_name, &v.model_version, "infer"),
                    infer_uri: grpc_uri(&v.endpoint, crate::dispatch::INFER).ok(),
                    suffix: crate::wire::model_ref_suffix(&v.model_name, &v.model_version),
                    counters: registry.get(&slug, &v.name, &v.model_id),
                    endpoint: Arc::from(v.endpoint.as_str()),
                    name: v.name,
                    model_id: v.model_id,
                    model_name: v.model_name,
                    model_version: v.model_version,
                    http_endpoint: v.http_endpoint,
                })
            })
            .collect();
        let mut ranges = Vec::with_capacity(spec.allocation.len());
        let mut alloc = spec.allocation;
        alloc.sort_by_key(|r| r.start);
        let mut next = 0;
        for r in alloc {
            let index = variants
                .iter()
                .position(|v| v.name == r.variant)
                .ok_or_else(|| format!("deployment {slug}: allocation names {:?}, not a variant", r.variant))?;
            if r.start != next || r.end <= r.start || r.end > SLOTS {
                return Err(format!("deployment {slug}: allocation ranges must cover 0..{SLOTS} exactly once"));
            }
            next = r.end;
            ranges.push((r.end, index));
        }
        if next != SLOTS {
            return Err(format!("deployment {slug}: allocation ranges must cover 0..{SLOTS} exactly once"));
        }
        Ok(Route {
            cache_version: spec.cache_version,
            shadow_mode: spec.shadow_mode,
            org_id: spec.org_id,
            slug,
            variants,
            ranges,
        })
    }
}

/// Every routed deployment at one etcd revision.
#[derive(Default)]
pub struct Table {
    pub revision: i64,
    pub routes: HashMap<String, Arc<Route>>,
}

impl Table {
    pub fn lookup(&self, slug: &str) -> Option<&Arc<Route>> {
        self.routes.get(slug)
    }

    /// The backend endpoints its routes name.
    pub fn endpoints(&self) -> HashSet<Arc<str>> {
        self.routes.values().flat_map(|r| r.variants.iter().map(|v| v.endpoint.clone())).collect()
    }

    /// A full snapshot. A route that does not build is left out and reported.
    pub fn from_snapshot(spec: SnapshotSpec, registry: &CountersRegistry) -> (Table, Vec<String>) {
        let mut problems = Vec::new();
        let mut routes = HashMap::with_capacity(spec.routes.len());
        for route in spec.routes {
            match Route::build(route, registry) {
                Ok(r) => {
                    routes.insert(r.slug.clone(), Arc::new(r));
                }
                Err(p) => problems.push(p),
            }
        }
        registry.retain(|slug| routes.contains_key(slug));
        (Table { revision: spec.revision, routes }, problems)
    }

    /// A new table: this one with `changes` applied (unchanged routes are shared).
    pub fn with_changes(&self, changes: ChangesSpec, registry: &CountersRegistry) -> (Table, Vec<String>) {
        let mut routes = self.routes.clone();
        let mut problems = Vec::new();
        for slug in &changes.remove {
            routes.remove(slug);
            registry.forget(slug);
        }
        for route in changes.upsert {
            let slug = route.slug.clone();
            match Route::build(route, registry) {
                Ok(r) => {
                    routes.insert(slug, Arc::new(r));
                }
                Err(p) => {
                    routes.remove(&slug);
                    problems.push(p);
                }
            }
        }
        (Table { revision: changes.revision, routes }, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shadow: bool) -> RouteSpec {
        let v = |name: &str| VariantSpec {
            name: name.into(),
            model_id: format!("mod_{name}"),
            endpoint: "127.0.0.1:1".into(),
            model_name: name.into(),
            model_version: String::new(),
            http_endpoint: String::new(),
        };
        RouteSpec {
            slug: "dep_a".into(),
            cache_version: 3,
            shadow_mode: shadow,
            variants: vec![v(CHAMPION), v("ch_1")],
            allocation: vec![
                RangeSpec { variant: CHAMPION.into(), start: 0, end: 9000 },
                RangeSpec { variant: "ch_1".into(), start: 9000, end: 10000 },
            ],
            org_id: String::new(),
        }
    }

    #[test]
    fn the_slot_owner_answers_in_split_mode() {
        let registry = CountersRegistry::default();
        let route = Route::build(spec(false), &registry).unwrap();
        assert_eq!(route.choose(0).0.name, CHAMPION);
        assert_eq!(route.choose(8999).0.name, CHAMPION);
        assert_eq!(route.choose(9000).0.name, "ch_1");
        assert_eq!(route.choose(9999).0.name, "ch_1");
        assert!(route.choose(9999).1.is_none());
    }

    #[test]
    fn shadow_mode_answers_with_the_champion_and_mirrors_to_the_owner() {
        let registry = CountersRegistry::default();
        let route = Route::build(spec(true), &registry).unwrap();
        let (answer, mirror) = route.choose(9500);
        assert_eq!(answer.name, CHAMPION);
        assert_eq!(mirror.unwrap().name, "ch_1");
        assert!(route.choose(10).1.is_none());
    }

    #[test]
    fn ranges_with_a_gap_are_refused() {
        let mut s = spec(false);
        s.allocation[1].start = 9100;
        assert!(Route::build(s, &CountersRegistry::default()).is_err());
    }

    #[test]
    fn slots_match_the_shared_vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/slots.json");
        let Ok(text) = std::fs::read_to_string(path) else { return }; // written by the allocation work
        let vectors: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = vectors.get("slots").or(Some(&vectors)).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        for case in cases {
            let (Some(slug), Some(key), Some(expected)) =
                (case["slug"].as_str(), case["key"].as_str(), case["slot"].as_u64())
            else {
                continue;
            };
            assert_eq!(u64::from(slot(slug, key.as_bytes())), expected, "slug {slug} key {key}");
        }
    }

    #[test]
    fn slot_matches_pythons_blake2b() {
        // int.from_bytes(hashlib.blake2b(b"dep_a\x00user-1", digest_size=8).digest(), "big") % 10000
        assert_eq!(slot("dep_a", b"user-1"), PY_SLOT_DEP_A_USER_1);
    }

    const PY_SLOT_DEP_A_USER_1: u32 = 6288;
}
