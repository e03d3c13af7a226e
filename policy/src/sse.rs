//! Server-sent events framing across arbitrary chunk boundaries.
//!
//! An event may arrive split over several body chunks, or several events may share one chunk.
//! [`SseFramer`] keeps the unfinished tail between chunks and hands out whole events, each with
//! its terminating blank line, so that callers can re-emit them byte for byte.

/// Splits a byte stream into whole SSE events.
#[derive(Debug, Default)]
pub struct SseFramer {
    pending: Vec<u8>,
}

impl SseFramer {
    pub fn new() -> SseFramer {
        SseFramer::default()
    }

    /// Adds a chunk and returns the events it completed (each including its terminator).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        // The tail is rescanned from its start on every chunk, so a terminator split across
        // chunks is found; the tail is at most one event long.
        while let Some(end) = find_event_end(&self.pending[start..]) {
            events.push(self.pending[start..start + end].to_vec());
            start += end;
        }
        if start > 0 {
            self.pending.drain(..start);
        }
        events
    }

    /// Bytes received that do not yet form a whole event.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Takes the unfinished tail (at end of stream).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the first whole event in `buf` including its blank-line terminator.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                // "\n\n" or "\n\r\n"
                if buf.get(i + 1) == Some(&b'\n') {
                    return Some(i + 2);
                }
                if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                    return Some(i + 3);
                }
            }
            b'\r' => {
                if buf.get(i + 1) == Some(&b'\n') {
                    // "\r\n\r\n" or "\r\n\n"
                    if buf.get(i + 2) == Some(&b'\r') && buf.get(i + 3) == Some(&b'\n') {
                        return Some(i + 4);
                    }
                    if buf.get(i + 2) == Some(&b'\n') {
                        return Some(i + 3);
                    }
                    i += 1;
                } else if buf.get(i + 1) == Some(&b'\r') {
                    return Some(i + 2);
                } else if i + 1 == buf.len() {
                    // A lone '\r' at the end may be the start of "\r\n": wait for more.
                    return None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The payload of an event's single `data:` line, if it has exactly one.
pub fn single_data_payload(event: &[u8]) -> Option<&[u8]> {
    let mut found = None;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if found.is_some() {
                return None;
            }
            found = Some(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    found
}

/// The line terminator an event uses, to re-emit a rewritten event in the same style.
pub fn line_ending(event: &[u8]) -> &'static [u8] {
    if event.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    }
}

/// The event with its `data:` lines replaced by one line carrying `payload`; its other fields
/// (`event:`, `id:`, `retry:`, comments) and its line endings are kept.
pub fn with_data(event: &[u8], payload: &[u8]) -> Vec<u8> {
    let ending = line_ending(event);
    let mut out = Vec::with_capacity(event.len() + payload.len());
    let mut wrote = false;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with(b"data:") {
            if !wrote {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(payload);
                out.extend_from_slice(ending);
                wrote = true;
            }
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(ending);
    }
    out.extend_from_slice(ending);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_data_replaces_only_the_data() {
        assert_eq!(
            with_data(b"event: message\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\n", b"{}"),
            b"event: message\r\nid: 7\r\ndata: {}\r\n\r\n"
        );
        assert_eq!(with_data(b"data: x\ndata: y\n\n", b"z"), b"data: z\n\n");
    }

    #[test]
    fn reassembles_events_split_anywhere() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut framer = SseFramer::new();
            let mut events = framer.push(&stream[..split]);
            events.extend(framer.push(&stream[split..]));
            assert_eq!(events.len(), 4, "split at {split}");
            assert_eq!(events.concat(), stream.to_vec());
            assert!(framer.pending().is_empty());
        }
    }

    #[test]
    fn keeps_an_unfinished_event_pending() {
        let mut framer = SseFramer::new();
        assert!(framer.push(b"data: {\"partial\"").is_empty());
        assert_eq!(framer.take_pending(), b"data: {\"partial\"".to_vec());
    }

    #[test]
    fn finds_the_single_data_payload() {
        assert_eq!(
            single_data_payload(b"data: {\"x\":1}\n\n"),
            Some(&b"{\"x\":1}"[..])
        );
        assert_eq!(
            single_data_payload(b"event: e\r\ndata:[DONE]\r\n\r\n"),
            Some(&b"[DONE]"[..])
        );
        assert_eq!(single_data_payload(b"data: a\ndata: b\n\n"), None);
        assert_eq!(single_data_payload(b": ping\n\n"), None);
    }
}
