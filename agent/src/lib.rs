//! `netlet-agent`: the node daemon.
//!
//! Its job (filled in by the agent issue): register the Node and renew its Lease, run the pods
//! bound to this node through containerd's CRI, write the CNI config so containerd invokes
//! `netlet-cni`, route to other nodes' pod CIDRs and masquerade traffic leaving the cluster.
//! It also has a network-only mode for running as a DaemonSet beside another kubelet.
//!
//! This crate is a placeholder so the workspace has its final shape; nothing here runs pods yet.
