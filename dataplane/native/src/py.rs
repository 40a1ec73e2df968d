//! The Python face, `dataplane._native`: start(config) -> Router; Router.swap_table,
//! apply_changes, counters, auth_stats, stop. Python objects are touched only at these
//! calls; the serving threads never take the GIL.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::serve::{Config, Server, Shared};

/// A running native router.
#[pyclass(frozen, module = "dataplane._native")]
struct Router {
    server: Mutex<Option<Server>>,
    port: u16,
}

impl Router {
    /// The running server's shared state. The lock is held only to clone the Arc, never
    /// while the GIL is released or waited for: a thread that locked it and then detached
    /// would wait for the GIL while holding it, and another thread holding the GIL and
    /// waiting for the lock (counters from the metrics thread, stop) would never get it.
    fn shared(&self) -> PyResult<Arc<Shared>> {
        let guard = self.server.lock().map_err(|_| PyRuntimeError::new_err("router state poisoned"))?;
        match guard.as_ref() {
            Some(server) => Ok(server.shared.clone()),
            None => Err(PyRuntimeError::new_err("the router is stopped")),
        }
    }
}

#[pymethods]
impl Router {
    /// The port every listener is bound to.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Replace the routing table with a full snapshot (JSON); returns the problems found
    /// (routes left out). The first one makes the router ready.
    fn swap_table(&self, py: Python<'_>, snapshot: &str) -> PyResult<Vec<String>> {
        let shared = self.shared()?;
        py.detach(|| crate::swap_table(&shared, snapshot)).map_err(PyValueError::new_err)
    }

    /// Apply changed and removed routes (JSON) to the current table.
    fn apply_changes(&self, py: Python<'_>, changes: &str) -> PyResult<Vec<String>> {
        let shared = self.shared()?;
        py.detach(|| crate::apply_changes(&shared, changes)).map_err(PyValueError::new_err)
    }

    /// Every variant's counters as JSON: {slug: {variant: {...}}}.
    fn counters(&self, py: Python<'_>) -> PyResult<String> {
        let shared = self.shared()?;
        Ok(py.detach(|| shared.registry.to_json().to_string()))
    }

    /// Shadow copies in flight (sent, their pairs not scored yet), in the whole router.
    fn mirrors_inflight(&self) -> PyResult<usize> {
        Ok(self.shared()?.mirrors.inflight())
    }

    /// Shadow pairs compared: (on a runtime thread, on the comparison threads).
    fn mirrors_compared(&self) -> PyResult<(u64, u64)> {
        let shared = self.shared()?;
        Ok((shared.mirrors.compared_inline.load(Relaxed), shared.mirrors.compared_off_runtime.load(Relaxed)))
    }

    /// `--auth jwt`: (tokens cached, tokens verified by signature); None without auth.
    fn auth_stats(&self) -> PyResult<Option<(usize, u64)>> {
        Ok(self.shared()?.verifier.as_ref().map(|v| (v.cached(), v.signature_checks())))
    }

    /// Whether the health service says SERVING.
    fn serving(&self) -> PyResult<bool> {
        Ok(self.shared()?.is_serving())
    }

    /// Stop accepting, give calls in flight up to grace_s seconds, then end. Idempotent.
    fn stop(&self, py: Python<'_>, grace_s: f64) -> PyResult<()> {
        let taken = self.server.lock().map_err(|_| PyRuntimeError::new_err("router state poisoned"))?.take();
        if let Some(mut server) = taken {
            let grace = Duration::from_secs_f64(grace_s.max(0.0));
            py.detach(move || server.stop(grace));
        }
        Ok(())
    }
}

/// Start serving with `config` (JSON of serve::Config). Raises OSError when the address
/// cannot be bound.
#[pyfunction]
fn start(py: Python<'_>, config: &str) -> PyResult<Router> {
    let config: Config = serde_json::from_str(config).map_err(|e| PyValueError::new_err(format!("bad config: {e}")))?;
    let server = py.detach(|| Server::start(config)).map_err(|e| PyOSError::new_err(e.to_string()))?;
    let port = server.port;
    Ok(Router { server: Mutex::new(Some(server)), port })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_class::<Router>()?;
    Ok(())
}
