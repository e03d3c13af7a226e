//! The AWS event-stream framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! `ConverseStream` sends it: an encoder and an incremental decoder.
//!
//! One message on the wire (all integers big-endian), per
//! <https://docs.aws.amazon.com/transcribe/latest/dg/event-stream.html> (the same framing is
//! documented for Lex V2 and used by every AWS streaming API):
//!
//! ```text
//! total length u32 | headers length u32 | prelude CRC u32     (the prelude: 12 bytes)
//! headers (headers length bytes) | payload
//! message CRC u32                                              (of every byte before it)
//! ```
//!
//! A header is `name length u8 | name | value type u8 | value`; the value types are 0 (true),
//! 1 (false), 2 (i8), 3 (i16), 4 (i32), 5 (i64), 6 (bytes, u16 length), 7 (UTF-8 string, u16
//! length), 8 (timestamp, i64 milliseconds) and 9 (UUID, 16 bytes). The CRCs are CRC-32 (IEEE,
//! as in gzip).
//!
//! Written here rather than taken from `aws-smithy-eventstream`: that crate brings
//! `aws-smithy-types` (with `http`, `http-body`, `time`, `base64-simd`) for a codec this small,
//! and ties the message types to the AWS SDK's.

use std::fmt;

/// Largest message accepted (the AWS limit is 16 MiB of payload plus headers).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 128 * 1024;

/// Prelude (12) plus message CRC (4): the size of a message with no headers and no payload.
const OVERHEAD: usize = 16;
const PRELUDE: usize = 12;

/// The value of one event-stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Bytes(Vec<u8>),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

impl HeaderValue {
    /// A string header, the only kind Bedrock sends (`:event-type`, `:message-type`, ...).
    pub fn string(value: impl Into<String>) -> HeaderValue {
        HeaderValue::String(value.into())
    }

    /// The value when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(value) => Some(value),
            _ => None,
        }
    }
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// In wire order.
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The first header called `name` (names are compared exactly, as AWS does).
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The first header called `name` when it is a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(HeaderValue::as_str)
    }
}

/// Encodes one message. Header names longer than 255 bytes and string or byte values longer
/// than 65535 bytes are cut to those limits (the format cannot carry more).
pub fn encode_message(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(usize::from(u8::MAX))];
        // The slice above is at most 255 bytes long.
        encoded_headers.push(name.len() as u8);
        encoded_headers.extend_from_slice(name);
        encode_value(&mut encoded_headers, value);
    }
    let total = OVERHEAD + encoded_headers.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32_len(total).to_be_bytes());
    out.extend_from_slice(&u32_len(encoded_headers.len()).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded_headers);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

fn u32_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn encode_value(out: &mut Vec<u8>, value: &HeaderValue) {
    fn with_u16_len(out: &mut Vec<u8>, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    match value {
        HeaderValue::Bool(true) => out.push(0),
        HeaderValue::Bool(false) => out.push(1),
        HeaderValue::Byte(v) => {
            out.push(2);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int16(v) => {
            out.push(3);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int32(v) => {
            out.push(4);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int64(v) => {
            out.push(5);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Bytes(v) => {
            out.push(6);
            with_u16_len(out, v);
        }
        HeaderValue::String(v) => {
            out.push(7);
            with_u16_len(out, v.as_bytes());
        }
        HeaderValue::Timestamp(v) => {
            out.push(8);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Uuid(v) => {
            out.push(9);
            out.extend_from_slice(v);
        }
    }
}

/// Why a byte stream is not a valid event stream. After one of these the framing is lost: the
/// decoder answers every later call with the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event-stream prelude CRC mismatch (sent {sent:#010x}, computed {computed:#010x})")]
    PreludeCrc { sent: u32, computed: u32 },
    #[error("event-stream message CRC mismatch (sent {sent:#010x}, computed {computed:#010x})")]
    MessageCrc { sent: u32, computed: u32 },
    #[error("event-stream message length {total} with headers length {headers} is invalid")]
    Length { total: u32, headers: u32 },
    #[error("event-stream header block is malformed: {0}")]
    Header(&'static str),
}

/// Reassembles messages from a byte stream cut anywhere: [`push`](Self::push) bytes as they
/// come, then take whole messages with [`next_message`](Self::next_message).
#[derive(Default)]
pub struct EventStreamDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (compacted lazily).
    start: usize,
    failed: Option<DecodeError>,
}

impl fmt::Debug for EventStreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStreamDecoder")
            .field("buffered", &self.buffered())
            .field("failed", &self.failed)
            .finish()
    }
}

impl EventStreamDecoder {
    pub fn new() -> EventStreamDecoder {
        EventStreamDecoder::default()
    }

    /// Appends the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received that are not yet part of a returned message (a message still incomplete
    /// when the stream ends is truncated).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. The prelude CRC is
    /// checked as soon as the prelude is complete, so a corrupted length is reported at once
    /// instead of waiting for bytes that will never come.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match self.try_next() {
            Ok(Some((message, len))) => {
                self.start += len;
                if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(message))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    fn try_next(&self) -> Result<Option<(Message, usize)>, DecodeError> {
        let bytes = &self.buf[self.start..];
        if bytes.len() < PRELUDE {
            return Ok(None);
        }
        let total = be_u32(&bytes[0..4]);
        let headers_len = be_u32(&bytes[4..8]);
        let sent = be_u32(&bytes[8..12]);
        let computed = crc32fast::hash(&bytes[0..8]);
        if sent != computed {
            return Err(DecodeError::PreludeCrc { sent, computed });
        }
        let length_error = DecodeError::Length {
            total,
            headers: headers_len,
        };
        let total_len = usize::try_from(total).map_err(|_| length_error.clone())?;
        let headers_len_usize = usize::try_from(headers_len).map_err(|_| length_error.clone())?;
        if !(OVERHEAD..=MAX_MESSAGE_BYTES).contains(&total_len)
            || headers_len_usize > total_len - OVERHEAD
        {
            return Err(length_error);
        }
        if bytes.len() < total_len {
            return Ok(None);
        }
        let message = &bytes[..total_len];
        let sent = be_u32(&message[total_len - 4..]);
        let computed = crc32fast::hash(&message[..total_len - 4]);
        if sent != computed {
            return Err(DecodeError::MessageCrc { sent, computed });
        }
        let headers = decode_headers(&message[PRELUDE..PRELUDE + headers_len_usize])?;
        let payload = message[PRELUDE + headers_len_usize..total_len - 4].to_vec();
        Ok(Some((Message { headers, payload }, total_len)))
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(word)
}

/// Reads headers from a block whose length the prelude gave.
fn decode_headers(mut block: &[u8]) -> Result<Vec<(String, HeaderValue)>, DecodeError> {
    fn take<'a>(block: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
        if block.len() < n {
            return Err(DecodeError::Header("a header runs past the header block"));
        }
        let (head, rest) = block.split_at(n);
        *block = rest;
        Ok(head)
    }
    fn array<const N: usize>(block: &mut &[u8]) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(take(block, N)?);
        Ok(out)
    }
    fn with_u16_len<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
        let len = u16::from_be_bytes(array(block)?);
        take(block, usize::from(len))
    }

    let mut headers = Vec::new();
    while !block.is_empty() {
        let name_len = array::<1>(&mut block)?[0];
        if name_len == 0 {
            return Err(DecodeError::Header("a header name is empty"));
        }
        let name = std::str::from_utf8(take(&mut block, usize::from(name_len))?)
            .map_err(|_| DecodeError::Header("a header name is not UTF-8"))?
            .to_owned();
        let value = match array::<1>(&mut block)?[0] {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(array(&mut block)?)),
            3 => HeaderValue::Int16(i16::from_be_bytes(array(&mut block)?)),
            4 => HeaderValue::Int32(i32::from_be_bytes(array(&mut block)?)),
            5 => HeaderValue::Int64(i64::from_be_bytes(array(&mut block)?)),
            6 => HeaderValue::Bytes(with_u16_len(&mut block)?.to_vec()),
            7 => HeaderValue::String(
                std::str::from_utf8(with_u16_len(&mut block)?)
                    .map_err(|_| DecodeError::Header("a string header value is not UTF-8"))?
                    .to_owned(),
            ),
            8 => HeaderValue::Timestamp(i64::from_be_bytes(array(&mut block)?)),
            9 => HeaderValue::Uuid(array(&mut block)?),
            _ => return Err(DecodeError::Header("unknown header value type")),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodings produced by an independent implementation (the Elixir `event_stream`
    /// package's doc tests, which frame with `:erlang.crc32`): a JSON payload without headers,
    /// and the same payload with one string header.
    #[test]
    fn matches_known_encodings_byte_for_byte() {
        let payload = br#"{"foo": "bar"}"#;
        let bare: Vec<u8> = [
            &[0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138][..],
            payload,
            &[174, 114, 88, 228],
        ]
        .concat();
        assert_eq!(encode_message(&[], payload), bare);

        let with_header: Vec<u8> = [
            &[0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12][..],
            b"content-type",
            &[7, 0, 16],
            b"application/json",
            payload,
            &[111, 162, 191, 59],
        ]
        .concat();
        assert_eq!(
            encode_message(
                &[("content-type", HeaderValue::string("application/json"))],
                payload
            ),
            with_header
        );

        let mut decoder = EventStreamDecoder::new();
        decoder.push(&with_header);
        let message = decoder.next_message().unwrap().unwrap();
        assert_eq!(message.header_str("content-type"), Some("application/json"));
        assert_eq!(message.payload, payload);
        assert_eq!(decoder.next_message().unwrap(), None);
        assert_eq!(decoder.buffered(), 0);
    }

    /// A Bedrock-shaped frame built by hand, field by field, with both CRCs computed
    /// independently of the encoder.
    #[test]
    fn bedrock_frame_layout_and_crcs() {
        let headers: &[(&str, &str)] = &[
            (":event-type", "messageStart"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ];
        let payload = br#"{"role":"assistant","p":"abcd"}"#;
        let mut header_block = Vec::new();
        for (name, value) in headers {
            header_block.push(name.len() as u8);
            header_block.extend_from_slice(name.as_bytes());
            header_block.push(7);
            header_block.extend_from_slice(&(value.len() as u16).to_be_bytes());
            header_block.extend_from_slice(value.as_bytes());
        }
        let total = 12 + header_block.len() + payload.len() + 4;
        let mut expected = Vec::new();
        expected.extend_from_slice(&(total as u32).to_be_bytes());
        expected.extend_from_slice(&(header_block.len() as u32).to_be_bytes());
        let prelude_crc = crc32_reference(&expected);
        expected.extend_from_slice(&prelude_crc.to_be_bytes());
        expected.extend_from_slice(&header_block);
        expected.extend_from_slice(payload);
        let message_crc = crc32_reference(&expected);
        expected.extend_from_slice(&message_crc.to_be_bytes());

        let encoded = encode_message(
            &headers
                .iter()
                .map(|(name, value)| (*name, HeaderValue::string(*value)))
                .collect::<Vec<_>>(),
            payload,
        );
        assert_eq!(encoded, expected);
        assert_eq!(encoded.len(), total);
    }

    /// Bit-by-bit CRC-32 (reflected polynomial 0xEDB88320), to check the crate's table
    /// implementation against.
    fn crc32_reference(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !crc
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32_reference(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn every_header_type_round_trips() {
        let headers = vec![
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Bool(false)),
            ("b", HeaderValue::Byte(-7)),
            ("s", HeaderValue::Int16(-300)),
            ("i", HeaderValue::Int32(70_000)),
            ("l", HeaderValue::Int64(-5_000_000_000)),
            ("bytes", HeaderValue::Bytes(vec![0, 1, 2, 255])),
            ("str", HeaderValue::string("héllo")),
            ("ts", HeaderValue::Timestamp(1_700_000_000_123)),
            ("id", HeaderValue::Uuid(*b"0123456789abcdef")),
        ];
        let encoded = encode_message(&headers, b"payload");
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&encoded);
        let message = decoder.next_message().unwrap().unwrap();
        let expected: Vec<(String, HeaderValue)> = headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        assert_eq!(message.headers, expected);
        assert_eq!(message.payload, b"payload");
    }

    #[test]
    fn reassembles_messages_cut_anywhere() {
        let one = encode_message(&[(":event-type", HeaderValue::string("a"))], b"{\"x\":1}");
        let two = encode_message(&[(":event-type", HeaderValue::string("b"))], b"");
        let stream = [one.clone(), two.clone()].concat();
        for cut in 0..=stream.len() {
            let mut decoder = EventStreamDecoder::new();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                decoder.push(part);
                while let Some(message) = decoder.next_message().unwrap() {
                    got.push(message.header_str(":event-type").unwrap().to_owned());
                }
            }
            assert_eq!(got, ["a", "b"], "cut at {cut}");
            assert_eq!(decoder.buffered(), 0);
        }
        // Byte by byte.
        let mut decoder = EventStreamDecoder::new();
        let mut count = 0;
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while decoder.next_message().unwrap().is_some() {
                count += 1;
            }
        }
        assert_eq!(count, 2);
    }

    #[test]
    fn bad_crcs_and_lengths_are_errors() {
        let good = encode_message(&[(":event-type", HeaderValue::string("a"))], b"{}");

        let mut bad_payload = good.clone();
        let last_payload_byte = bad_payload.len() - 5;
        bad_payload[last_payload_byte] ^= 1;
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&bad_payload);
        assert!(matches!(
            decoder.next_message(),
            Err(DecodeError::MessageCrc { .. })
        ));
        // The framing is lost: the error sticks, even with good bytes after it.
        decoder.push(&good);
        assert!(decoder.next_message().is_err());

        let mut bad_prelude = good.clone();
        bad_prelude[3] ^= 0x40;
        let mut decoder = EventStreamDecoder::new();
        // Only the prelude: the error comes before the (wrong) length's bytes are there.
        decoder.push(&bad_prelude[..12]);
        assert!(matches!(
            decoder.next_message(),
            Err(DecodeError::PreludeCrc { .. })
        ));

        // A consistent prelude announcing a message shorter than the overhead.
        let mut tiny = Vec::new();
        tiny.extend_from_slice(&8u32.to_be_bytes());
        tiny.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&tiny);
        tiny.extend_from_slice(&crc.to_be_bytes());
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&tiny);
        assert!(matches!(
            decoder.next_message(),
            Err(DecodeError::Length { .. })
        ));

        // Headers that run past their block.
        let mut frame = Vec::new();
        let header_block = [5u8, b'a'];
        let total = (16 + header_block.len()) as u32;
        frame.extend_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&(header_block.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_be_bytes());
        frame.extend_from_slice(&header_block);
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_be_bytes());
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&frame);
        assert!(matches!(
            decoder.next_message(),
            Err(DecodeError::Header(_))
        ));
    }

    #[test]
    fn long_names_and_values_are_cut_to_the_format_limits() {
        let name = "n".repeat(300);
        let value = "v".repeat(70_000);
        let encoded = encode_message(&[(&name, HeaderValue::String(value))], b"");
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&encoded);
        let message = decoder.next_message().unwrap().unwrap();
        assert_eq!(message.headers[0].0.len(), 255);
        assert_eq!(message.headers[0].1.as_str().unwrap().len(), 65_535);
    }
}
