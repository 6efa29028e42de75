"""Checks the official Kubernetes Python client against netlet-control-plane.

Usage: client_checks.py KUBECONFIG NAMESPACE

Prints one line per check ("ok: ..." or "FAIL: ...") and exits non-zero if any
check failed, so the Rust test (tests/python_client.rs) can show the output.
"""

import sys
import threading
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

FAILED = []


def check(name):
    """Runs the decorated function at once as one named check."""

    def run(fn):
        try:
            fn()
            print(f"ok: {name}", flush=True)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            FAILED.append(name)
            print(f"FAIL: {name}\n{traceback.format_exc()}", flush=True)
        return fn

    return run


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def api_error(fn):
    """Calls fn and returns the ApiException it raises (fails if it does not)."""
    try:
        fn()
    except ApiException as e:
        return e
    raise AssertionError("expected an ApiException, the call succeeded")


def main():
    kubeconfig, ns = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

    def cm(name, data, labels=None):
        return client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, labels=labels), data=data
        )

    @check("configmap create/read/replace/patch/delete")
    def _():
        created = core.create_namespaced_config_map(ns, cm("crud", {"a": "1"}))
        expect(created.metadata.uid, "create returns a uid")
        got = core.read_namespaced_config_map("crud", ns)
        expect(got.data == {"a": "1"}, f"read data {got.data}")
        got.data["a"] = "2"
        replaced = core.replace_namespaced_config_map("crud", ns, got)
        expect(replaced.data == {"a": "2"}, f"replace data {replaced.data}")
        expect(
            int(replaced.metadata.resource_version) > int(created.metadata.resource_version),
            "replace bumps resourceVersion",
        )
        patched = core.patch_namespaced_config_map("crud", ns, {"data": {"b": "3"}})
        expect(patched.data == {"a": "2", "b": "3"}, f"patch data {patched.data}")
        core.delete_namespaced_config_map("crud", ns)
        e = api_error(lambda: core.read_namespaced_config_map("crud", ns))
        expect(e.status == 404, f"read after delete gives {e.status}")

    @check("deployment create/read/replace/patch/delete")
    def _():
        labels = {"app": "web"}
        dep = client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="c", image="nginx:1")]
                    ),
                ),
            ),
        )
        created = apps.create_namespaced_deployment(ns, dep)
        expect(created.metadata.generation == 1, f"generation {created.metadata.generation}")
        got = apps.read_namespaced_deployment("web", ns)
        expect(got.spec.template.spec.containers[0].image == "nginx:1", "read image")
        # The deployment controller writes status concurrently, so a replace may meet a newer
        # resourceVersion: read again and retry on 409, as every Kubernetes client must.
        for _attempt in range(10):
            got.spec.template.spec.containers[0].image = "nginx:2"
            try:
                replaced = apps.replace_namespaced_deployment("web", ns, got)
                break
            except ApiException as e:
                if e.status != 409:
                    raise
                got = apps.read_namespaced_deployment("web", ns)
        else:
            raise AssertionError("replace conflicted 10 times in a row")
        expect(replaced.metadata.generation == 2, f"generation after replace {replaced.metadata.generation}")
        # strategic merge patch: the containers list merges by name
        patched = apps.patch_namespaced_deployment(
            "web",
            ns,
            {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:3"}]}}}},
        )
        containers = patched.spec.template.spec.containers
        expect(
            len(containers) == 1 and containers[0].image == "nginx:3",
            f"patched containers {containers}",
        )
        apps.delete_namespaced_deployment("web", ns)
        e = api_error(lambda: apps.read_namespaced_deployment("web", ns))
        expect(e.status == 404, f"read after delete gives {e.status}")

    @check("ApiException 404 NotFound")
    def _():
        e = api_error(lambda: core.read_namespaced_config_map("absent", ns))
        expect(e.status == 404, f"status {e.status}")
        expect(e.reason == "Not Found", f"reason {e.reason}")
        expect('"NotFound"' in e.body, f"body {e.body}")

    @check("ApiException 409 AlreadyExists and Conflict")
    def _():
        first = core.create_namespaced_config_map(ns, cm("dup", {"v": "1"}))
        e = api_error(lambda: core.create_namespaced_config_map(ns, cm("dup", {"v": "2"})))
        expect(e.status == 409, f"duplicate create status {e.status}")
        expect('"AlreadyExists"' in e.body, f"body {e.body}")
        core.patch_namespaced_config_map("dup", ns, {"data": {"v": "3"}})
        stale = first  # carries the old resourceVersion
        stale.data = {"v": "4"}
        e = api_error(lambda: core.replace_namespaced_config_map("dup", ns, stale))
        expect(e.status == 409, f"stale replace status {e.status}")
        expect('"Conflict"' in e.body, f"body {e.body}")
        expect(core.read_namespaced_config_map("dup", ns).data == {"v": "3"}, "store unchanged")

    @check("watch ADDED/MODIFIED/DELETED in order")
    def _():
        start_rv = core.list_namespaced_config_map(ns).metadata.resource_version
        events = []
        w = watch.Watch()
        done = threading.Event()

        def consume():
            for ev in w.stream(
                core.list_namespaced_config_map,
                ns,
                resource_version=start_rv,
                field_selector="metadata.name=watched",
                timeout_seconds=30,
            ):
                events.append((ev["type"], ev["object"].data))
                if ev["type"] == "DELETED":
                    w.stop()
            done.set()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        core.create_namespaced_config_map(ns, cm("watched", {"n": "0"}))
        core.patch_namespaced_config_map("watched", ns, {"data": {"n": "1"}})
        core.delete_namespaced_config_map("watched", ns)
        expect(done.wait(30), f"watch did not end with DELETED; events so far {events}")
        want = [("ADDED", {"n": "0"}), ("MODIFIED", {"n": "1"}), ("DELETED", {"n": "1"})]
        expect(events == want, f"events {events}")

    @check("pagination with limit/_continue")
    def _():
        for i in range(25):
            core.create_namespaced_config_map(ns, cm(f"page-{i:02}", {"i": str(i)}, {"set": "page"}))
        names, token, pages = [], None, 0
        while True:
            kwargs = {"label_selector": "set=page", "limit": 10}
            if token:
                kwargs["_continue"] = token
            page = core.list_namespaced_config_map(ns, **kwargs)
            pages += 1
            expect(len(page.items) <= 10, f"page of {len(page.items)} items")
            names += [item.metadata.name for item in page.items]
            token = page.metadata._continue
            if not token:
                break
            expect(
                page.metadata.remaining_item_count in (None, 25 - len(names)),
                f"remainingItemCount {page.metadata.remaining_item_count}",
            )
        expect(pages == 3, f"{pages} pages")
        expect(names == [f"page-{i:02}" for i in range(25)], f"names {names}")

    @check("pod status subresource")
    def _():
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="status-pod"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        )
        core.create_namespaced_pod(ns, pod)
        patched = core.patch_namespaced_pod_status(
            "status-pod", ns, {"status": {"phase": "Running", "podIP": "10.244.0.7"}}
        )
        expect(patched.status.phase == "Running", f"phase {patched.status.phase}")
        # the main resource ignores status changes, the status subresource ignores spec changes
        core.patch_namespaced_pod("status-pod", ns, {"status": {"phase": "Failed"}})
        core.patch_namespaced_pod_status(
            "status-pod", ns, {"spec": {"activeDeadlineSeconds": 5}}
        )
        got = core.read_namespaced_pod_status("status-pod", ns)
        expect(got.status.phase == "Running", f"phase after main-resource patch {got.status.phase}")
        expect(got.status.pod_ip == "10.244.0.7", f"podIP {got.status.pod_ip}")
        expect(got.spec.active_deadline_seconds is None, "status patch changed spec")
        core.delete_namespaced_pod("status-pod", ns, grace_period_seconds=0)

    @check("deployment scale subresource")
    def _():
        labels = {"app": "scaled"}
        apps.create_namespaced_deployment(
            ns,
            client.V1Deployment(
                metadata=client.V1ObjectMeta(name="scaled"),
                spec=client.V1DeploymentSpec(
                    replicas=0,
                    selector=client.V1LabelSelector(match_labels=labels),
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels=labels),
                        spec=client.V1PodSpec(
                            containers=[client.V1Container(name="c", image="nginx:1")]
                        ),
                    ),
                ),
            ),
        )
        scale = apps.read_namespaced_deployment_scale("scaled", ns)
        expect(scale.spec.replicas == 0, f"scale spec {scale.spec.replicas}")
        scale = apps.patch_namespaced_deployment_scale("scaled", ns, {"spec": {"replicas": 3}})
        expect(scale.spec.replicas == 3, f"patched scale {scale.spec.replicas}")
        expect(scale.status.selector == "app=scaled", f"scale selector {scale.status.selector}")
        dep = apps.read_namespaced_deployment("scaled", ns)
        expect(dep.spec.replicas == 3, f"deployment replicas {dep.spec.replicas}")
        apps.delete_namespaced_deployment("scaled", ns)

    @check("finalizer holds a deletion until removed")
    def _():
        held = cm("held", {"x": "1"})
        held.metadata.finalizers = ["example.com/hold"]
        core.create_namespaced_config_map(ns, held)
        core.delete_namespaced_config_map("held", ns)
        got = core.read_namespaced_config_map("held", ns)
        expect(got.metadata.deletion_timestamp is not None, "deletionTimestamp set")
        expect(got.metadata.finalizers == ["example.com/hold"], f"finalizers {got.metadata.finalizers}")
        core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}})
        e = api_error(lambda: core.read_namespaced_config_map("held", ns))
        expect(e.status == 404, f"read after finalizer removal gives {e.status}")

    if FAILED:
        print(f"{len(FAILED)} check(s) failed: {', '.join(FAILED)}", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
