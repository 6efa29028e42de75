//! The CRI log file format containerd writes for every container: one record per line,
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`, where `P` marks a fragment of a longer line
//! that continues in the next record of the same stream. Decoding joins the fragments so that
//! readers see whole lines, as kubelet's `kubectl logs` does.

use k8s_openapi::jiff::Timestamp;

/// Which output stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

/// One whole log line: its first fragment's time and the text including the final `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the runtime wrote the line's first fragment.
    pub time: Timestamp,
    /// The time exactly as written in the file, for `timestamps=true`.
    pub raw_time: String,
    /// The stream it came from.
    pub stream: Stream,
    /// The text, ending in `\n`.
    pub text: Vec<u8>,
}

impl LogLine {
    /// The bytes sent to the client: the text, prefixed with the time when asked for.
    pub fn render(&self, timestamps: bool) -> Vec<u8> {
        if !timestamps {
            return self.text.clone();
        }
        let mut out = Vec::with_capacity(self.raw_time.len() + 1 + self.text.len());
        out.extend_from_slice(self.raw_time.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.text);
        out
    }
}

/// A record that does not follow the CRI log format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed CRI log record {record:?}: {reason}")]
pub struct DecodeError {
    /// The record, lossily decoded, for the message.
    pub record: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Joins fragments into lines. Records are fed one at a time (without their `\n`) in file order;
/// a pending fragment per stream waits for its final record.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: [Option<LogLine>; 2],
}

impl Decoder {
    /// Decodes one record; `Some` when it completes a line.
    pub fn feed(&mut self, record: &[u8]) -> Result<Option<LogLine>, DecodeError> {
        let bad = |reason| DecodeError {
            record: String::from_utf8_lossy(record).into_owned(),
            reason,
        };
        let mut fields = record.splitn(4, |b| *b == b' ');
        let raw_time = fields.next().ok_or_else(|| bad("no timestamp"))?;
        let stream = match fields.next() {
            Some(b"stdout") => Stream::Stdout,
            Some(b"stderr") => Stream::Stderr,
            _ => return Err(bad("the stream is neither stdout nor stderr")),
        };
        let partial = match fields.next() {
            Some(b"F") => false,
            Some(b"P") => true,
            _ => return Err(bad("the tag is neither F nor P")),
        };
        let text = fields.next().unwrap_or_default();
        let raw_time = std::str::from_utf8(raw_time).map_err(|_| bad("timestamp is not UTF-8"))?;
        let time: Timestamp = raw_time
            .parse()
            .map_err(|_| bad("timestamp is not RFC 3339"))?;
        let slot = &mut self.pending[stream as usize];
        let line = slot.get_or_insert_with(|| LogLine {
            time,
            raw_time: raw_time.to_string(),
            stream,
            text: Vec::new(),
        });
        line.text.extend_from_slice(text);
        if partial {
            return Ok(None);
        }
        let mut line = slot.take().expect("the slot was just filled");
        line.text.push(b'\n');
        Ok(Some(line))
    }

    /// Decodes every complete record of `buf` (up to its last `\n`) and returns the lines and
    /// how many bytes were consumed; the rest is an unfinished record to read again later.
    /// Malformed records are skipped with a warning, as kubelet does.
    pub fn feed_buffer(&mut self, buf: &[u8]) -> (Vec<LogLine>, usize) {
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return (Vec::new(), 0);
        };
        let mut lines = Vec::new();
        for record in buf[..end].split(|b| *b == b'\n') {
            if record.is_empty() {
                continue;
            }
            match self.feed(record) {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => {}
                Err(err) => tracing::warn!(%err, "skipping a log record"),
            }
        }
        (lines, end + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_records_become_lines_with_a_newline() {
        let mut d = Decoder::default();
        let line = d
            .feed(b"2026-11-23T18:00:00.123456789Z stdout F hello world")
            .unwrap()
            .unwrap();
        assert_eq!(line.text, b"hello world\n");
        assert_eq!(line.stream, Stream::Stdout);
        assert_eq!(line.raw_time, "2026-11-23T18:00:00.123456789Z");
        assert_eq!(
            line.render(true),
            b"2026-11-23T18:00:00.123456789Z hello world\n"
        );
    }

    #[test]
    fn partial_records_join_per_stream_with_the_first_time() {
        let mut d = Decoder::default();
        assert_eq!(d.feed(b"2026-11-23T18:00:00Z stdout P abc").unwrap(), None);
        let err = d
            .feed(b"2026-11-23T18:00:01Z stderr F oops")
            .unwrap()
            .unwrap();
        assert_eq!(err.text, b"oops\n");
        let out = d
            .feed(b"2026-11-23T18:00:02Z stdout F def")
            .unwrap()
            .unwrap();
        assert_eq!(out.text, b"abcdef\n");
        assert_eq!(out.raw_time, "2026-11-23T18:00:00Z");
    }

    #[test]
    fn empty_text_is_an_empty_line() {
        let mut d = Decoder::default();
        let line = d.feed(b"2026-11-23T18:00:00Z stdout F ").unwrap().unwrap();
        assert_eq!(line.text, b"\n");
    }

    #[test]
    fn malformed_records_are_errors_and_skipped_in_buffers() {
        let mut d = Decoder::default();
        assert_eq!(
            d.feed(b"2026-11-23T18:00:00Z stdin F x")
                .unwrap_err()
                .reason,
            "the stream is neither stdout nor stderr"
        );
        assert_eq!(
            d.feed(b"yesterday stdout F x").unwrap_err().reason,
            "timestamp is not RFC 3339"
        );
        let buf = b"junk\n2026-11-23T18:00:00Z stdout F ok\n2026-11-23T18:00:01Z stdout F unfin";
        let (lines, used) = d.feed_buffer(buf);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text, b"ok\n");
        assert_eq!(&buf[used..], b"2026-11-23T18:00:01Z stdout F unfin");
    }
}
