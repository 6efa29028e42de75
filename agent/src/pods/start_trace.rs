//! Per-pod start timing: when the pod's watch event reached the manager, and how long after
//! that each start stage finished, logged once when the pod is first reported Ready.
//!
//! The one log line per pod separates queueing (the worker task not yet running, a stage
//! waiting for the next resync) from work (the CRI and API calls), which is what the pod start
//! benchmark needs to tell where its latency goes.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The start stages of one pod, as offsets from the watch event that handed it to the manager.
#[derive(Debug)]
pub struct StartTrace {
    seen: Instant,
    marks: Vec<(&'static str, Duration)>,
    done: bool,
}

impl StartTrace {
    /// A trace of a pod whose watch event arrived at `seen`.
    pub fn new(seen: Instant) -> Self {
        Self {
            seen,
            marks: Vec::new(),
            done: false,
        }
    }

    /// Records that `stage` finished now (ignored once the pod was reported Ready).
    pub fn mark(&mut self, stage: &'static str) {
        if !self.done {
            self.marks.push((stage, self.seen.elapsed()));
        }
    }

    /// Records the Ready report and returns the log line, once; `None` afterwards.
    pub fn finish(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        self.mark("ready written");
        self.done = true;
        let mut line = String::new();
        for (i, (stage, at)) in self.marks.iter().enumerate() {
            if i > 0 {
                line.push_str(", ");
            }
            let _ = write!(line, "{stage} +{}ms", at.as_millis());
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_stage_once_in_order() {
        let mut t = StartTrace::new(Instant::now());
        t.mark("sync started");
        t.mark("sandbox running");
        let line = t.finish().expect("first finish reports");
        let stages: Vec<&str> = line
            .split(", ")
            .map(|s| s.split(" +").next().unwrap_or_default())
            .collect();
        assert_eq!(stages, ["sync started", "sandbox running", "ready written"]);
        assert!(line.ends_with("ms"), "{line}");
        t.mark("after ready");
        assert_eq!(t.finish(), None);
    }
}
