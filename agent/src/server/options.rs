//! The options of a log request (kubelet's `/containerLogs` query, which is `PodLogOptions`) and
//! the pure selection they make from decoded lines: since, tail, timestamps and the byte limit.

use super::cri_log::LogLine;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// What a log request asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines.
    pub follow: bool,
    /// The log of the previous run of the container.
    pub previous: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Only lines written at or after this time (`sinceTime`, or now minus `sinceSeconds`).
    pub since: Option<Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// A query value that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value {value:?} for the log option {name}: {reason}")]
pub struct OptionError {
    /// The parameter.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl LogOptions {
    /// Parses a URL query string; `now` resolves `sinceSeconds`.
    pub fn parse(query: Option<&str>, now: Timestamp) -> Result<Self, OptionError> {
        let mut o = LogOptions::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let bad = |reason| OptionError {
                name: name.to_string(),
                value: value.to_string(),
                reason,
            };
            let flag = || match value.as_ref() {
                "" | "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(bad("not a boolean")),
            };
            let count = || {
                value
                    .parse::<i64>()
                    .map_err(|_| bad("not an integer"))
                    .and_then(|n| usize::try_from(n).map_err(|_| bad("must not be negative")))
            };
            match name.as_ref() {
                "follow" => o.follow = flag()?,
                "previous" => o.previous = flag()?,
                "timestamps" => o.timestamps = flag()?,
                "tailLines" => o.tail_lines = Some(count()?),
                "limitBytes" => {
                    let n = count()?;
                    if n == 0 {
                        return Err(bad("must be greater than zero"));
                    }
                    o.limit_bytes = Some(n);
                }
                "sinceSeconds" => {
                    let n = count()?;
                    if n == 0 {
                        return Err(bad("must be greater than zero"));
                    }
                    let secs = i64::try_from(n).map_err(|_| bad("too large"))?;
                    o.since = Some(
                        now.checked_sub(SignedDuration::from_secs(secs))
                            .map_err(|_| bad("too large"))?,
                    );
                }
                "sinceTime" => {
                    o.since = Some(value.parse().map_err(|_| bad("not an RFC 3339 time"))?)
                }
                _ => {}
            }
        }
        Ok(o)
    }

    /// Whether `line` passes the `since` filter.
    pub fn wanted(&self, line: &LogLine) -> bool {
        self.since.is_none_or(|since| line.time >= since)
    }

    /// The first response of a request: the lines already in the file after `since` and
    /// `tailLines`, rendered.
    pub fn initial(&self, lines: Vec<LogLine>) -> Vec<Vec<u8>> {
        let mut kept: Vec<LogLine> = lines.into_iter().filter(|l| self.wanted(l)).collect();
        if let Some(n) = self.tail_lines {
            let skip = kept.len().saturating_sub(n);
            kept.drain(..skip);
        }
        kept.iter().map(|l| l.render(self.timestamps)).collect()
    }
}

/// Counts bytes against `limitBytes` and cuts the chunk that crosses it.
#[derive(Debug)]
pub struct ByteBudget {
    left: Option<usize>,
}

impl ByteBudget {
    /// A budget of `limit` bytes, or unlimited.
    pub fn new(limit: Option<usize>) -> Self {
        ByteBudget { left: limit }
    }

    /// The part of `chunk` that still fits (all of it when unlimited).
    pub fn take(&mut self, mut chunk: Vec<u8>) -> Vec<u8> {
        if let Some(left) = self.left.as_mut() {
            chunk.truncate(*left);
            *left -= chunk.len();
        }
        chunk
    }

    /// Whether the budget is used up (the response ends).
    pub fn exhausted(&self) -> bool {
        self.left == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::cri_log::Decoder;
    use super::*;

    fn lines() -> Vec<LogLine> {
        let file = b"2026-11-23T18:00:00Z stdout F one\n\
                     2026-11-23T18:00:10Z stderr F two\n\
                     2026-11-23T18:00:20Z stdout F three\n";
        Decoder::default().feed_buffer(file).0
    }

    fn now() -> Timestamp {
        "2026-11-23T18:00:30Z".parse().unwrap()
    }

    #[test]
    fn parses_kubectl_queries() {
        let o = LogOptions::parse(
            Some("follow=true&previous=true&tailLines=2&timestamps=true&limitBytes=5&sinceSeconds=15"),
            now(),
        )
        .unwrap();
        assert!(o.follow && o.previous && o.timestamps);
        assert_eq!(o.tail_lines, Some(2));
        assert_eq!(o.limit_bytes, Some(5));
        assert_eq!(o.since, Some("2026-11-23T18:00:15Z".parse().unwrap()));
        let t = LogOptions::parse(Some("sinceTime=2026-11-23T18%3A00%3A05Z"), now()).unwrap();
        assert_eq!(t.since, Some("2026-11-23T18:00:05Z".parse().unwrap()));
        assert_eq!(
            LogOptions::parse(None, now()).unwrap(),
            LogOptions::default()
        );
    }

    #[test]
    fn refuses_bad_values_naming_the_option() {
        let err = LogOptions::parse(Some("tailLines=-1"), now()).unwrap_err();
        assert_eq!(err.name, "tailLines");
        assert!(LogOptions::parse(Some("limitBytes=0"), now()).is_err());
        assert!(LogOptions::parse(Some("follow=maybe"), now()).is_err());
        assert!(LogOptions::parse(Some("sinceTime=noon"), now()).is_err());
    }

    #[test]
    fn tail_keeps_the_last_lines_and_since_filters_first() {
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(
            tail.initial(lines()),
            [b"two\n".to_vec(), b"three\n".to_vec()]
        );
        let both = LogOptions {
            tail_lines: Some(5),
            since: Some("2026-11-23T18:00:10Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            both.initial(lines()),
            [b"two\n".to_vec(), b"three\n".to_vec()]
        );
        let zero = LogOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert!(zero.initial(lines()).is_empty());
    }

    #[test]
    fn timestamps_prefix_the_original_time() {
        let o = LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(
            o.initial(lines()),
            [b"2026-11-23T18:00:20Z three\n".to_vec()]
        );
    }

    #[test]
    fn the_budget_cuts_the_crossing_chunk() {
        let mut b = ByteBudget::new(Some(5));
        assert_eq!(b.take(b"one\n".to_vec()), b"one\n");
        assert!(!b.exhausted());
        assert_eq!(b.take(b"two\n".to_vec()), b"t");
        assert!(b.exhausted());
        let mut unlimited = ByteBudget::new(None);
        assert_eq!(unlimited.take(b"x".to_vec()), b"x");
        assert!(!unlimited.exhausted());
    }
}
