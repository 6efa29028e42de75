//! EndpointSlices and Endpoints.

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netlet_control_plane::controllers::ControllersConfig;
use serde_json::json;

use super::harness::*;

/// (ip, ready, terminating) of every endpoint in the service's slices, sorted.
async fn slice_view(client: &Client, svc: &str) -> Vec<(String, bool, bool, Vec<i32>)> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap();
    let mut view = Vec::new();
    for s in list.items {
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Service", svc));
        let ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
        for e in s.endpoints.into_iter().flatten() {
            let c = e.conditions.unwrap();
            assert!(e.target_ref.is_some() && e.node_name.as_deref() == Some("n1"));
            view.push((
                e.addresses[0].clone(),
                c.ready.unwrap(),
                c.terminating.unwrap(),
                ports.clone(),
            ));
        }
    }
    view.sort();
    view
}

/// (ready IPs, not-ready IPs, ports) of the service's core/v1 Endpoints.
async fn endpoints_view(
    client: &Client,
    svc: &str,
) -> Option<(Vec<String>, Vec<String>, Vec<i32>)> {
    let ep = Api::<Endpoints>::namespaced(client.clone(), "default")
        .get(svc)
        .await
        .ok()?;
    let (mut ready, mut not_ready, mut ports) = (Vec::new(), Vec::new(), Vec::new());
    for s in ep.subsets.into_iter().flatten() {
        ready.extend(s.addresses.into_iter().flatten().map(|a| a.ip));
        not_ready.extend(s.not_ready_addresses.into_iter().flatten().map(|a| a.ip));
        ports.extend(s.ports.into_iter().flatten().map(|p| p.port));
    }
    ready.sort();
    not_ready.sort();
    Some((ready, not_ready, ports))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_readiness_and_resolve_named_ports() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &web_pod("a", 8080))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &web_pod("b", 8080))
        .await
        .unwrap();
    set_status(&pods, "a", "10.244.0.10", true).await;
    set_status(&pods, "b", "10.244.0.11", true).await;
    let both_ready = vec![
        ("10.244.0.10".to_string(), true, false, vec![8080]),
        ("10.244.0.11".to_string(), true, false, vec![8080]),
    ];
    h.wait(
        "both pods ready in the slice on the named port 8080",
        || async { (slice_view(&c, "web").await == both_ready).then_some(()) },
    )
    .await;
    h.wait("both pods in Endpoints", || async {
        let v = endpoints_view(&c, "web").await?;
        (v == (
            vec!["10.244.0.10".into(), "10.244.0.11".into()],
            vec![],
            vec![8080],
        ))
            .then_some(())
    })
    .await;

    // Count writes to the slice from here: a pod change that does not change the endpoints
    // (an annotation) must not write; b's readiness flip must write exactly once.
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let synced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        use futures::StreamExt;
        use kube::runtime::watcher::{self, Event};
        let (writes, synced) = (writes.clone(), synced.clone());
        let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
        let cancel = h.cancel.clone();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(
                slices,
                watcher::Config::default().fields("metadata.name=web-0"),
            )
            .boxed();
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = stream.next() => ev,
                };
                match ev {
                    Some(Ok(Event::InitDone)) => {
                        synced.store(true, std::sync::atomic::Ordering::SeqCst)
                    }
                    Some(Ok(Event::Apply(_) | Event::Delete(_))) => {
                        writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    None => return,
                    _ => {}
                }
            }
        });
    }
    h.wait("slice watch synced", || async {
        synced
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(())
    })
    .await;
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"touched": "1"}}})),
    )
    .await
    .unwrap();

    // b turns not ready: its address moves to not-ready in both APIs.
    set_status(&pods, "b", "10.244.0.11", false).await;
    h.wait("b not ready in the slice", || async {
        let v = slice_view(&c, "web").await;
        (v.iter().any(|e| e.0 == "10.244.0.11" && !e.1)
            && v.iter().any(|e| e.0 == "10.244.0.10" && e.1))
        .then_some(())
    })
    .await;
    h.wait("b in notReadyAddresses", || async {
        let v = endpoints_view(&c, "web").await?;
        (v.0 == ["10.244.0.10"] && v.1 == ["10.244.0.11"]).then_some(())
    })
    .await;
    h.wait("the flip's write seen by the watch", || async {
        (writes.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    assert_eq!(
        writes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one write for the readiness flip, none for the annotation"
    );

    // A pod whose "http" port is another number lands in its own port group.
    pods.create(&PostParams::default(), &web_pod("d", 9090))
        .await
        .unwrap();
    set_status(&pods, "d", "10.244.0.12", true).await;
    h.wait("d on port 9090", || async {
        slice_view(&c, "web")
            .await
            .iter()
            .any(|e| e.0 == "10.244.0.12" && e.3 == [9090])
            .then_some(())
    })
    .await;

    // Graceful deletion of a bound pod: terminating in the slice, gone from Endpoints.
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    h.wait("a terminating in the slice", || async {
        slice_view(&c, "web")
            .await
            .iter()
            .any(|e| e.0 == "10.244.0.10" && !e.1 && e.2)
            .then_some(())
    })
    .await;
    h.wait("a gone from Endpoints", || async {
        let v = endpoints_view(&c, "web").await?;
        (!v.0.contains(&"10.244.0.10".to_string())).then_some(())
    })
    .await;

    // The label no longer matching takes d out as well.
    pods.patch(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    h.wait("relabelled d leaves the slice", || async {
        (!slice_view(&c, "web")
            .await
            .iter()
            .any(|e| e.0 == "10.244.0.12"))
        .then_some(())
    })
    .await;
}
