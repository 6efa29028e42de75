//! Tests of the etcd store against real etcd processes (Debian's `/usr/bin/etcd`): the
//! conformance suite on a single member, failover in a 3-member cluster, and write throughput.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use integration::ChildGuard;

use super::{EtcdError, EtcdStorage};
use crate::storage::{EventKind, Storage, StorageError};

/// How long a member may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One etcd process; killed (SIGKILL) when dropped.
struct Member {
    process: Option<ChildGuard>,
    client_url: String,
    log: PathBuf,
}

/// etcd members in their own data directories, killed on drop.
struct Cluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Starts `size` members. `tmpfs` puts the data on /dev/shm (fsync is free there), for
    /// tests that are about semantics, not durability.
    async fn start(size: usize, tmpfs: bool) -> Cluster {
        let dir = if tmpfs && Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let urls: Vec<_> = (0..size)
            .map(|_| {
                (
                    format!("http://127.0.0.1:{}", free_port()),
                    format!("http://127.0.0.1:{}", free_port()),
                )
            })
            .collect();
        let initial_cluster = urls
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        // A single member elects itself quickly with short timeouts; a cluster on two busy
        // cores needs etcd's defaults to avoid spurious elections.
        let (heartbeat, election) = if size == 1 {
            ("10", "100")
        } else {
            ("100", "1000")
        };
        let members = urls
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let log = dir.path().join(format!("m{i}.log"));
                let child = Command::new("etcd")
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}")))
                    .args(["--listen-client-urls", client])
                    .args(["--advertise-client-urls", client])
                    .args(["--listen-peer-urls", peer])
                    .args(["--initial-advertise-peer-urls", peer])
                    .args(["--initial-cluster", &initial_cluster])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "netlet-test"])
                    .args(["--heartbeat-interval", heartbeat])
                    .args(["--election-timeout", election])
                    .args(["--logger", "zap", "--log-level", "warn"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .expect("start /usr/bin/etcd (Debian package etcd-server)");
                Member {
                    process: Some(ChildGuard::new(child)),
                    client_url: client.clone(),
                    log,
                }
            })
            .collect();
        let cluster = Cluster { members, _dir: dir };
        for member in &cluster.members {
            cluster.wait_ready(member).await;
        }
        cluster
    }

    /// Waits until `member` answers a linearizable read (so the cluster has a leader).
    async fn wait_ready(&self, member: &Member) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = async {
                let mut client = etcd_client::Client::connect([&member.client_url], None).await?;
                client.get("/ready", None).await
            };
            match tokio::time::timeout(Duration::from_secs(2), ready).await {
                Ok(Ok(_)) => return,
                _ if Instant::now() >= deadline => {
                    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                    panic!(
                        "etcd at {} not ready within {START_TIMEOUT:?}; log:\n{log}",
                        member.client_url
                    );
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    async fn store(&self, prefix: &str) -> EtcdStorage {
        EtcdStorage::connect(&self.endpoints(), prefix)
            .await
            .unwrap()
    }

    /// The index of a member that is not the raft leader.
    async fn follower(&self) -> usize {
        for (i, member) in self.members.iter().enumerate() {
            let mut client = etcd_client::Client::connect([&member.client_url], None)
                .await
                .unwrap();
            let status = client.status().await.unwrap();
            if status.header().unwrap().member_id() != status.leader() {
                return i;
            }
        }
        panic!("every member claims to lead");
    }

    /// SIGKILLs member `i` by its PID and reaps it.
    fn kill(&mut self, i: usize) {
        let process = self.members[i].process.take().expect("member running");
        eprintln!("killing etcd member m{i} (pid {})", process.id());
        drop(process);
    }
}

/// The conformance tests, each on its own single-member etcd: they count revisions from an
/// empty store, and etcd's revision is global.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let cluster = Cluster::start(1, true).await;
            let store: Arc<dyn Storage> = Arc::new(cluster.store("").await);
            crate::storage::conformance::$name(store).await;
        }
    )*};
}

crate::storage::conformance::all_tests!(conformance);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_keeps_stores_apart() {
    let cluster = Cluster::start(1, true).await;
    let a = cluster.store("/tenant-a").await;
    let b = cluster.store("/tenant-b").await;
    let ra = a
        .create("/registry/pods/default/x", b"a".to_vec())
        .await
        .unwrap();
    b.create("/registry/pods/default/x", b"b".to_vec())
        .await
        .unwrap();
    let got = a.get("/registry/pods/default/x").await.unwrap().unwrap();
    assert_eq!(
        (got.key.as_str(), got.value.as_slice()),
        ("/registry/pods/default/x", &b"a"[..])
    );
    let listed = a.list("", None, 0, None).await.unwrap();
    assert_eq!(listed.kvs.len(), 1);
    let mut watch = a.watch("", 0).await.unwrap();
    let event = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (event.kv.key.as_str(), event.revision()),
        ("/registry/pods/default/x", ra)
    );
    // The raw key in etcd carries the prefix.
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let raw = raw
        .get("/tenant-a/registry/pods/default/x", None)
        .await
        .unwrap();
    assert_eq!(raw.kvs()[0].value(), b"a");
}

/// A LIST larger than gRPC's 4 MiB message cap and than one page: read in pages at one
/// revision, all keys in order, and `limit` + continue still page exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_lists_are_read_in_pages_at_one_revision() {
    let cluster = Cluster::start(1, true).await;
    let store = std::sync::Arc::new(cluster.store("").await);
    let value = vec![b'x'; 4096];
    let n = 1_300; // ~5.3 MB and 3 pages of 500
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let (store, value) = (std::sync::Arc::clone(&store), value.clone());
            tokio::spawn(async move {
                for i in (w..n).step_by(16) {
                    store
                        .create(&format!("/registry/pods/big/p{i:05}"), value.clone())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = store
        .list("/registry/pods/big/", None, 0, None)
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), n);
    assert!(!all.more);
    assert!(all.kvs.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    // A write after the snapshot does not appear when listing at that revision.
    store
        .create("/registry/pods/big/zz-late", value.clone())
        .await
        .unwrap();
    let again = store
        .list("/registry/pods/big/", Some(all.revision), 0, None)
        .await
        .unwrap();
    assert_eq!(again.kvs.len(), n);
    let page = store
        .list("/registry/pods/big/", Some(all.revision), 700, None)
        .await
        .unwrap();
    assert_eq!((page.kvs.len(), page.more), (700, true));
    let rest = store
        .list(
            "/registry/pods/big/",
            Some(all.revision),
            0,
            Some(&page.kvs[699].key),
        )
        .await
        .unwrap();
    assert_eq!(rest.kvs.len(), n - 700);
}

#[tokio::test]
async fn connect_needs_an_endpoint() {
    let err = EtcdStorage::connect::<&str>(&[], "").await.unwrap_err();
    assert!(matches!(err, StorageError::Backend { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_are_skipped() {
    let cluster = Cluster::start(1, true).await;
    // Nothing listens on the first endpoint: requests, writes included, go to the next one.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let endpoints = [dead, cluster.endpoints()[0].clone()];
    let store = EtcdStorage::connect(&endpoints, "").await.unwrap();
    let revision = store.create("/k", b"v".to_vec()).await.unwrap();
    assert_eq!(
        store.get("/k").await.unwrap().unwrap().mod_revision,
        revision
    );
}

/// An acknowledged write: key, revision, and when the request was sent.
type Acked = (String, u64, Instant);

/// Creates one key after another until `deadline`; returns the acknowledged writes. Errors are
/// allowed (a write in flight when its member or the leader dies has an unknown outcome) but
/// counted.
async fn write_until(
    store: Arc<EtcdStorage>,
    writer: usize,
    deadline: Instant,
) -> (Vec<Acked>, usize) {
    let (mut acked, mut failed) = (Vec::new(), 0);
    let mut i = 0;
    while Instant::now() < deadline {
        let key = format!("/registry/pods/w{writer}/{i}");
        i += 1;
        let sent = Instant::now();
        match store.create(&key, key.clone().into_bytes()).await {
            Ok(revision) => acked.push((key, revision, sent)),
            Err(err) => {
                eprintln!("writer {writer}: {err}");
                // The store says so when a failed write may have happened.
                let unknown = matches!(&err, StorageError::Backend { source, .. }
                    if matches!(source.downcast_ref(), Some(EtcdError::OutcomeUnknown { .. })));
                assert!(unknown, "{err}");
                failed += 1;
            }
        }
    }
    (acked, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_losing_a_member() {
    let mut cluster = Cluster::start(3, true).await;
    // The store sends requests to its first endpoint: make that a follower, the member to kill.
    // (Killing the leader also works, but writes in flight then wait for etcd's request
    // timeout, about 7 s, before failing; that is etcd's behaviour, not the client's.)
    let victim = cluster.follower().await;
    let mut endpoints = cluster.endpoints();
    endpoints.swap(0, victim);
    let store = Arc::new(EtcdStorage::connect(&endpoints, "").await.unwrap());
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch("/registry/pods/", start).await.unwrap();
    // The watch opens on first poll; open it now, on the first member.
    let _ = futures::poll!(watch.next());

    const WRITERS: usize = 4;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(write_until(
                store,
                w,
                Instant::now() + Duration::from_secs(4),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Kill the store's member while writes are in flight.
    cluster.kill(victim);
    let killed_at = Instant::now();

    let mut acked = Vec::new();
    let mut failed = 0;
    for writer in writers {
        let (mine, errors) = writer.await.unwrap();
        // Every writer kept writing through the remaining members.
        let after_kill = mine.iter().filter(|(_, _, sent)| *sent > killed_at).count();
        assert!(
            after_kill > 0,
            "a writer got no write through after the kill"
        );
        acked.extend(mine.into_iter().map(|(key, revision, _)| (key, revision)));
        failed += errors;
    }
    // Writes in flight at the kill (on the member, or waiting for a leader that died) have an
    // unknown outcome and fail; the store does not retry them, so none is applied twice.
    eprintln!(
        "{} acknowledged writes, {failed} failed around the kill",
        acked.len()
    );
    let after = store
        .create("/registry/pods/after/kill", b"x".to_vec())
        .await
        .unwrap();
    acked.push(("/registry/pods/after/kill".to_owned(), after));

    // No acknowledged write is lost: every one is readable, at its revision.
    let listed = store.list("/registry/pods/", None, 0, None).await.unwrap();
    let stored: BTreeSet<_> = listed
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    for write in &acked {
        assert!(stored.contains(write), "acknowledged write {write:?} lost");
    }
    // The watch, opened on the killed member, failed over and saw every acknowledged write.
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !acked.iter().all(|w| seen.contains(w)) {
        let event = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .expect("watch delivers every acknowledged write")
            .expect("watch still open")
            .expect("watch has no error");
        assert_eq!(event.kind, EventKind::Put);
        seen.insert((event.kv.key, event.kv.mod_revision));
    }
    let got = store
        .get("/registry/pods/after/kill")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.mod_revision, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_write_throughput() {
    // On disk (not tmpfs): every write waits for etcd's fsync. No assertion on speed.
    let cluster = Cluster::start(1, false).await;
    let store = Arc::new(cluster.store("").await);
    for writers in [1usize, 16] {
        let per_writer = 400 / writers;
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..per_writer {
                        let key = format!("/bench/{writers}/{w}/{i}");
                        store.create(&key, vec![0; 512]).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let writes = writers * per_writer;
        let rate = writes as f64 / started.elapsed().as_secs_f64();
        eprintln!("etcd (1 member, on disk): {writers} writer(s): {writes} writes, {rate:.0} durable writes/s");
    }
}
