//! Errors of the scheduler's API calls.

/// What failed talking to the apiserver, on which pod.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// POST …/pods/NAME/binding failed.
    #[error("binding pod {pod} to node {node}: {source}")]
    Bind {
        /// `namespace/name`.
        pod: String,
        /// The chosen node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Patching the PodScheduled condition failed.
    #[error("setting PodScheduled=False on pod {pod}: {source}")]
    Condition {
        /// `namespace/name`.
        pod: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating an Event failed.
    #[error("recording event {reason} for pod {pod}: {source}")]
    Event {
        /// `namespace/name`.
        pod: String,
        /// The event's reason.
        reason: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A watch ended (the stream of nodes or pods closed).
    #[error("the {kind} watch ended")]
    WatchEnded {
        /// `nodes` or `pods`.
        kind: &'static str,
    },
}
