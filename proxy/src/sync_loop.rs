//! The proxy's reconcile step on top of [`crate::watch`]: Services and EndpointSlices in every
//! namespace → [`ServiceTable`] → [`Backend`].
//!
//! The table is rebuilt from the stores on every run (building is cheap and pure); what varies is
//! how much the backend is asked to write: a full [`Backend::sync`] on start, after a relist and
//! after any failed sync (a failed partial sync may leave the backend's view of "previous"
//! uncertain), otherwise [`Backend::sync_changed`] with the Services whose Service object or
//! EndpointSlices changed.

use crate::backend::{Backend, SyncStats};
use crate::config::ProxyConfig;
use crate::conntrack::{self, ConntrackTable};
use crate::error::Result;
use crate::health_check::HealthCheckServer;
use crate::model::{ServiceKey, ServiceTable, SERVICE_NAME_LABEL};
use crate::watch::{watch_pair, Change, WatchConfig, WatchError};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The key a Service's changes are reported under.
pub fn service_key(svc: &Service) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        svc.metadata.namespace.as_deref()?,
        svc.metadata.name.as_deref()?,
    ))
}

/// The key of the Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_service_key(slice: &EndpointSlice) -> Option<ServiceKey> {
    let ns = slice.metadata.namespace.as_deref()?;
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceKey::new(ns, svc.as_str()))
}

/// Counters of the sync loop, shared with whoever exports them (the binary's metrics endpoint).
#[derive(Debug, Default)]
pub struct SyncMetrics {
    full_syncs: AtomicU64,
    partial_syncs: AtomicU64,
    failed_syncs: AtomicU64,
    last_sync_micros: AtomicU64,
    sync_micros_total: AtomicU64,
    services: AtomicU64,
    service_ports: AtomicU64,
    endpoints: AtomicU64,
    conntrack_deleted: AtomicU64,
    conntrack_failures: AtomicU64,
    /// The backend's map sizes after the last successful sync ([`Backend::map_entries`]).
    map_entries: std::sync::Mutex<Vec<(&'static str, usize)>>,
}

impl SyncMetrics {
    /// The counters in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "netlet_proxy_syncs_total",
            "counter",
            "Backend syncs by kind and result.",
            &[
                (
                    "{kind=\"full\",result=\"ok\"}",
                    get(&self.full_syncs).to_string(),
                ),
                (
                    "{kind=\"partial\",result=\"ok\"}",
                    get(&self.partial_syncs).to_string(),
                ),
                ("{result=\"error\"}", get(&self.failed_syncs).to_string()),
            ],
        );
        metric(
            "netlet_proxy_sync_duration_seconds_total",
            "counter",
            "Time spent in backend syncs (build and apply).",
            &[(
                "",
                format!("{:.6}", get(&self.sync_micros_total) as f64 / 1e6),
            )],
        );
        metric(
            "netlet_proxy_last_sync_duration_seconds",
            "gauge",
            "Duration of the last backend sync.",
            &[(
                "",
                format!("{:.6}", get(&self.last_sync_micros) as f64 / 1e6),
            )],
        );
        metric(
            "netlet_proxy_services_programmed",
            "gauge",
            "Services in the last table synced.",
            &[("", get(&self.services).to_string())],
        );
        metric(
            "netlet_proxy_service_ports_programmed",
            "gauge",
            "Service ports in the last table synced.",
            &[("", get(&self.service_ports).to_string())],
        );
        metric(
            "netlet_proxy_endpoints_programmed",
            "gauge",
            "Endpoints (per service port) in the last table synced.",
            &[("", get(&self.endpoints).to_string())],
        );
        metric(
            "netlet_proxy_conntrack_entries_deleted_total",
            "counter",
            "Stale UDP conntrack entries deleted after syncs.",
            &[("", get(&self.conntrack_deleted).to_string())],
        );
        metric(
            "netlet_proxy_conntrack_cleanup_failures_total",
            "counter",
            "Conntrack cleanups that failed (the entries then expire on their own).",
            &[("", get(&self.conntrack_failures).to_string())],
        );
        let maps = self
            .map_entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !maps.is_empty() {
            let samples: Vec<(String, String)> = maps
                .iter()
                .map(|(map, n)| (format!("{{map=\"{map}\"}}"), n.to_string()))
                .collect();
            let samples: Vec<(&str, String)> = samples
                .iter()
                .map(|(l, v)| (l.as_str(), v.clone()))
                .collect();
            metric(
                "netlet_proxy_map_entries",
                "gauge",
                "Entries in the backend's kernel maps after the last sync (eBPF).",
                &samples,
            );
        }
        out
    }
}

/// Owns the backend and turns store contents plus a [`Change`] into one backend sync.
pub struct ProxySyncer {
    backend: Box<dyn Backend>,
    config: ProxyConfig,
    needs_full: bool,
    metrics: Arc<SyncMetrics>,
    conntrack: Option<Box<dyn ConntrackTable>>,
    health_check: Option<HealthCheckServer>,
    /// The table of the last successful sync: what the dataplane did before the next one.
    last: Option<ServiceTable>,
}

impl ProxySyncer {
    /// A syncer whose first sync is a full one.
    pub fn new(backend: Box<dyn Backend>, config: ProxyConfig) -> Self {
        Self {
            backend,
            config,
            needs_full: true,
            metrics: Arc::default(),
            conntrack: None,
            health_check: None,
            last: None,
        }
    }

    /// Deletes stale UDP conntrack entries in `table` after every successful sync
    /// ([`conntrack::cleanup`]); without it (tests, dry runs) nothing is deleted.
    pub fn with_conntrack(mut self, table: Box<dyn ConntrackTable>) -> Self {
        self.conntrack = Some(table);
        self
    }

    /// The counters this syncer updates.
    pub fn metrics(&self) -> Arc<SyncMetrics> {
        self.metrics.clone()
    }

    /// Builds the table from `services` and `slices` and syncs what `change` says changed.
    pub fn apply(
        &mut self,
        services: &[Service],
        slices: &[EndpointSlice],
        change: &Change<ServiceKey>,
    ) -> Result<SyncStats> {
        let start = Instant::now();
        let table = ServiceTable::build(services, slices, &self.config);
        let full = self.needs_full || matches!(change, Change::Resync);
        let result = match change {
            Change::Keys(keys) if !full => {
                let keys: Vec<ServiceKey> = keys.iter().cloned().collect();
                self.backend.sync_changed(&table, &keys)
            }
            _ => self.backend.sync(&table),
        };
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let m = &self.metrics;
        m.last_sync_micros.store(micros, Ordering::Relaxed);
        m.sync_micros_total.fetch_add(micros, Ordering::Relaxed);
        match &result {
            Ok(stats) => {
                self.needs_full = false;
                let counter = if full {
                    &m.full_syncs
                } else {
                    &m.partial_syncs
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let endpoints: usize = table.ports().map(|p| p.endpoints.len()).sum();
                m.services
                    .store(table.services().len() as u64, Ordering::Relaxed);
                m.service_ports.store(table.len() as u64, Ordering::Relaxed);
                m.endpoints.store(endpoints as u64, Ordering::Relaxed);
                *m.map_entries.lock().unwrap_or_else(|p| p.into_inner()) =
                    self.backend.map_entries();
                self.clean_conntrack(&table);
                if let Some(hc) = self.health_check.as_mut() {
                    // Logged by the server; a busy port must not fail the service rules.
                    let _ = hc.sync(&table);
                }
                tracing::info!(
                    backend = self.backend.name(),
                    full,
                    services = table.services().len(),
                    elapsed_ms = micros / 1000,
                    ?stats,
                    "synced"
                );
            }
            Err(_) => {
                self.needs_full = true;
                m.failed_syncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Serves the health check node ports of each synced table through `server`.
    pub fn with_health_check(mut self, server: HealthCheckServer) -> Self {
        self.health_check = Some(server);
        self
    }

    /// Runs the conntrack cleanup for the change from the last synced table to `table`. A
    /// failure is logged and counted, not returned: the rules are in place, and the stale
    /// entries only delay clients until they expire.
    fn clean_conntrack(&mut self, table: &ServiceTable) {
        let previous = self.last.replace(table.clone());
        let (Some(ct), Some(previous)) = (self.conntrack.as_deref_mut(), previous) else {
            return;
        };
        match conntrack::cleanup(ct, &previous, table) {
            Ok(n) => {
                self.metrics
                    .conntrack_deleted
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics
                    .conntrack_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "deleting stale UDP conntrack entries");
            }
        }
    }

    fn apply_stores(
        &mut self,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        change: &Change<ServiceKey>,
    ) -> Result<SyncStats> {
        let services: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
        let slices: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
        self.apply(&services, &slices, change)
    }
}

/// Watches Services and EndpointSlices in all namespaces through `client` and keeps the
/// syncer's backend in step until `cancel` fires. Returns the syncer (so the caller can, e.g.,
/// inspect or clean up the backend).
pub async fn run(
    client: Client,
    mut syncer: ProxySyncer,
    cfg: WatchConfig,
    cancel: CancellationToken,
) -> std::result::Result<ProxySyncer, WatchError> {
    watch_pair(
        Api::<Service>::all(client.clone()),
        Api::<EndpointSlice>::all(client),
        service_key,
        slice_service_key,
        cfg,
        cancel,
        |services, slices, change| syncer.apply_stores(services, slices, change).map(|_| ()),
    )
    .await?;
    Ok(syncer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Records `None` for a full sync, the keys for a partial one; fails while `fail` is set.
    #[derive(Default, Clone)]
    struct Fake {
        calls: Arc<Mutex<Vec<Option<Vec<ServiceKey>>>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Fake {
        fn result(&self) -> Result<SyncStats> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::UnknownBackend("refused".into()));
            }
            Ok(SyncStats::default())
        }
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn sync(&mut self, _: &ServiceTable) -> Result<SyncStats> {
            self.calls.lock().unwrap().push(None);
            self.result()
        }
        fn sync_changed(&mut self, _: &ServiceTable, keys: &[ServiceKey]) -> Result<SyncStats> {
            self.calls.lock().unwrap().push(Some(keys.to_vec()));
            self.result()
        }
        fn cleanup(&mut self) -> Result<SyncStats> {
            Ok(SyncStats::default())
        }
    }

    fn service(ns: &str, name: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"],
                     "ports": [{"port": 53, "protocol": "UDP"}]},
        }))
        .unwrap()
    }

    #[test]
    fn keys_name_the_owning_service() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "kube-system", "name": "dns-x1",
                         "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4", "endpoints": [],
        }))
        .unwrap();
        let key = ServiceKey::new("kube-system", "dns");
        assert_eq!(slice_service_key(&slice), Some(key.clone()));
        assert_eq!(service_key(&service("kube-system", "dns")), Some(key));
        let unlabelled = EndpointSlice::default();
        assert_eq!(slice_service_key(&unlabelled), None);
    }

    #[test]
    fn full_first_partial_after_and_full_again_after_a_failure() {
        let fake = Fake::default();
        let mut syncer = ProxySyncer::new(Box::new(fake.clone()), ProxyConfig::new("n"));
        let svcs = [service("kube-system", "dns")];
        let key = ServiceKey::new("kube-system", "dns");
        let changed = Change::Keys(BTreeSet::from([key.clone()]));
        // The first sync is full even when told about keys only.
        syncer.apply(&svcs, &[], &changed).unwrap();
        syncer.apply(&svcs, &[], &changed).unwrap();
        fake.fail.store(true, Ordering::SeqCst);
        syncer.apply(&svcs, &[], &changed).unwrap_err();
        fake.fail.store(false, Ordering::SeqCst);
        syncer.apply(&svcs, &[], &changed).unwrap();
        syncer.apply(&svcs, &[], &Change::Resync).unwrap();
        assert_eq!(
            *fake.calls.lock().unwrap(),
            vec![None, Some(vec![key.clone()]), Some(vec![key]), None, None]
        );
        let text = syncer.metrics().render_prometheus();
        for line in [
            "netlet_proxy_syncs_total{kind=\"full\",result=\"ok\"} 3",
            "netlet_proxy_syncs_total{kind=\"partial\",result=\"ok\"} 1",
            "netlet_proxy_syncs_total{result=\"error\"} 1",
            "netlet_proxy_services_programmed 1",
            "netlet_proxy_service_ports_programmed 1",
            "netlet_proxy_endpoints_programmed 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    /// Records each cleanup's filters.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<Vec<String>>>>);

    impl ConntrackTable for Recorder {
        fn delete_matching(&mut self, filters: &[conntrack::Filter]) -> Result<usize> {
            let text = filters.iter().map(ToString::to_string).collect();
            self.0.lock().unwrap().push(text);
            Ok(filters.len())
        }
    }

    #[test]
    fn conntrack_cleanup_follows_successful_syncs_only() {
        let fake = Fake::default();
        let ct = Recorder::default();
        let mut syncer = ProxySyncer::new(Box::new(fake.clone()), ProxyConfig::new("n"))
            .with_conntrack(Box::new(ct.clone()));
        let svcs = [service("kube-system", "dns")];
        let slice = |ips: &[&str]| -> EndpointSlice {
            let eps: Vec<_> = ips
                .iter()
                .map(|ip| serde_json::json!({"addresses": [ip]}))
                .collect();
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "kube-system", "name": "dns-1",
                             "labels": {"kubernetes.io/service-name": "dns"}},
                "addressType": "IPv4", "endpoints": eps,
                "ports": [{"port": 5353, "protocol": "UDP"}],
            }))
            .unwrap()
        };
        let key = Change::Keys(BTreeSet::from([ServiceKey::new("kube-system", "dns")]));
        // The first sync has no previous table to compare with.
        syncer
            .apply(&svcs, &[slice(&["10.244.1.10", "10.244.1.11"])], &key)
            .unwrap();
        // A failed sync deletes nothing: the old rules may still be in place.
        fake.fail.store(true, Ordering::SeqCst);
        syncer
            .apply(&svcs, &[slice(&["10.244.1.11"])], &key)
            .unwrap_err();
        fake.fail.store(false, Ordering::SeqCst);
        assert!(ct.0.lock().unwrap().is_empty());
        // The next successful sync compares with the last successful one.
        syncer
            .apply(&svcs, &[slice(&["10.244.1.11"])], &key)
            .unwrap();
        syncer
            .apply(&svcs, &[slice(&["10.244.1.11"])], &key)
            .unwrap();
        assert_eq!(
            *ct.0.lock().unwrap(),
            [vec![
                "udp dst=10.96.0.9:53 reply-src=10.244.1.10:5353".to_string()
            ]]
        );
        let text = syncer.metrics().render_prometheus();
        assert!(
            text.contains("netlet_proxy_conntrack_entries_deleted_total 1\n"),
            "{text}"
        );
    }
}
