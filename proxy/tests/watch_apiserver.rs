//! The sync loop against our real apiserver (`netlet-control-plane serve` on 127.0.0.1, port
//! 0, in a temporary directory, killed by PID at the end): Services and EndpointSlices created,
//! changed and deleted through a kube-rs client must reach the backend as a full sync first and
//! then as partial syncs naming exactly the changed Service.
//!
//! The backend is a recording one (no kernel, no root needed).

mod support;

use integration::TestApiserver;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use netlet_proxy::sync_loop::{self, ProxySyncer};
use netlet_proxy::watch::WatchConfig;
use netlet_proxy::{Backend, ProxyConfig, Result, ServiceKey, ServiceTable, SyncStats};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One call the recording backend received.
#[derive(Debug, Clone)]
enum Call {
    Full(ServiceTable),
    Partial(ServiceTable, Vec<ServiceKey>),
}

impl Call {
    fn table(&self) -> &ServiceTable {
        match self {
            Call::Full(t) | Call::Partial(t, _) => t,
        }
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Call>>>);

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until some call from index `from` on satisfies `pred`; returns its index.
    async fn wait_for(&self, from: usize, what: &str, pred: impl Fn(&Call) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let calls = self.calls();
            if let Some(i) = calls.iter().skip(from).position(&pred) {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "no backend call with {what} within 20s; calls: {calls:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Backend for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn sync(&mut self, table: &ServiceTable) -> Result<SyncStats> {
        self.0.lock().unwrap().push(Call::Full(table.clone()));
        Ok(SyncStats::default())
    }

    fn sync_changed(&mut self, table: &ServiceTable, changed: &[ServiceKey]) -> Result<SyncStats> {
        self.0
            .lock()
            .unwrap()
            .push(Call::Partial(table.clone(), changed.to_vec()));
        Ok(SyncStats::default())
    }

    fn cleanup(&mut self) -> Result<SyncStats> {
        Ok(SyncStats::default())
    }
}

fn service(name: &str, cluster_ip: &str) -> Service {
    serde_json::from_value(support::service_json(name, cluster_ip)).expect("service json")
}

fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    serde_json::from_value(support::slice_json(name, service, ips)).expect("endpointslice json")
}

/// The endpoint addresses of `key`'s ports in `table`; `None` if the Service is absent.
fn endpoints_of(table: &ServiceTable, key: &ServiceKey) -> Option<Vec<IpAddr>> {
    let ports: Vec<_> = table.ports_of(key).collect();
    if ports.is_empty() {
        return None;
    }
    Some(
        ports
            .iter()
            .flat_map(|p| p.endpoints.iter().map(|e| e.ip))
            .collect(),
    )
}

fn ips(s: &[&str]) -> Vec<IpAddr> {
    s.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_reach_the_backend_full_then_partial() {
    let server = TestApiserver::start();
    let client = server.client().await;
    let recorder = Recorder::default();
    let syncer = ProxySyncer::new(Box::new(recorder.clone()), ProxyConfig::new("node-a"));
    let metrics = syncer.metrics();
    let cancel = CancellationToken::new();
    let cfg = WatchConfig {
        debounce: Duration::from_millis(50),
        min_interval: Duration::from_millis(50),
        ..WatchConfig::default()
    };
    let task = tokio::spawn(sync_loop::run(client.clone(), syncer, cfg, cancel.clone()));

    // The first sync is a full one, made once both kinds are listed.
    recorder
        .wait_for(0, "the initial full sync", |c| matches!(c, Call::Full(_)))
        .await;
    assert!(
        matches!(recorder.calls()[0], Call::Full(_)),
        "first call must be full: {:#?}",
        recorder.calls()
    );

    let web = ServiceKey::new("default", "web");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let mark = recorder.calls().len();
    services
        .create(&pp, &service("web", "10.96.0.50"))
        .await
        .unwrap_or_else(|e| panic!("create service: {e}; log:\n{}", server.log()));
    slices
        .create(&pp, &slice("web-abc", "web", &["10.244.1.5", "10.244.1.6"]))
        .await
        .unwrap_or_else(|e| panic!("create endpointslice: {e}; log:\n{}", server.log()));
    let both = ips(&["10.244.1.5", "10.244.1.6"]);
    let i = recorder
        .wait_for(mark, "web and both endpoints", |c| {
            endpoints_of(c.table(), &web).as_ref() == Some(&both)
        })
        .await;
    let calls = recorder.calls();
    let port = calls[i].table().ports_of(&web).next().unwrap().clone();
    assert_eq!(port.cluster_ips, ips(&["10.96.0.50"]));
    assert_eq!(port.port, 80);
    assert!(port.endpoints.iter().all(|e| e.port == 8080 && e.local));
    for c in &calls[mark..=i] {
        match c {
            Call::Partial(_, keys) => assert_eq!(keys, std::slice::from_ref(&web), "{c:#?}"),
            Call::Full(_) => panic!("a change must not cause a full sync: {calls:#?}"),
        }
    }

    // One endpoint goes away: a partial sync naming only web.
    let mark = calls.len();
    let mut current = slices.get("web-abc").await.expect("get endpointslice");
    current.endpoints.as_mut().expect("endpoints").truncate(1);
    slices
        .replace("web-abc", &pp, &current)
        .await
        .expect("replace endpointslice");
    let one = ips(&["10.244.1.5"]);
    let i = recorder
        .wait_for(mark, "web with one endpoint", |c| {
            endpoints_of(c.table(), &web).as_ref() == Some(&one)
        })
        .await;
    match &recorder.calls()[i] {
        Call::Partial(_, keys) => assert_eq!(keys, std::slice::from_ref(&web)),
        c => panic!("expected a partial sync: {c:#?}"),
    }

    // The Service is deleted: it leaves the table, again as a partial sync of web.
    let mark = recorder.calls().len();
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    let i = recorder
        .wait_for(mark, "web removed", |c| {
            endpoints_of(c.table(), &web).is_none()
        })
        .await;
    match &recorder.calls()[i] {
        Call::Partial(_, keys) => assert_eq!(keys, std::slice::from_ref(&web)),
        c => panic!("expected a partial sync: {c:#?}"),
    }
    let text = metrics.render_prometheus();
    assert!(
        text.contains("netlet_proxy_syncs_total{kind=\"full\",result=\"ok\"} 1"),
        "{text}"
    );

    cancel.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the loop stops within 10s of cancellation")
        .expect("the loop task does not panic");
    assert!(stopped.is_ok(), "loop ended with {:?}", stopped.err());
}
