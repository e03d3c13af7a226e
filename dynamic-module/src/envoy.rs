//! The safe side of the FFI: one stream's view of Envoy, valid inside the hook that made it.
//!
//! Every `unsafe` call into Envoy is here. Envoy's buffers are copied before a method returns,
//! so nothing borrowed from Envoy outlives the hook.

use std::ffi::c_void;

use crate::abi::{self, Buffer, EnvoyFilter, HttpHeader};

pub fn log(level: u32, message: &str) {
    // SAFETY: the message buffer lives for the call; Envoy copies it.
    unsafe { abi::envoy_dynamic_module_callback_log(level, Buffer::of(message.as_bytes())) }
}

/// Which side of the exchange a header or body call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

impl Side {
    fn headers(self) -> u32 {
        match self {
            Side::Request => abi::REQUEST_HEADER,
            Side::Response => abi::RESPONSE_HEADER,
        }
    }

    fn received_body(self) -> u32 {
        match self {
            Side::Request => abi::RECEIVED_REQUEST_BODY,
            Side::Response => abi::RECEIVED_RESPONSE_BODY,
        }
    }

    fn buffered_body(self) -> u32 {
        match self {
            Side::Request => abi::BUFFERED_REQUEST_BODY,
            Side::Response => abi::BUFFERED_RESPONSE_BODY,
        }
    }
}

/// Envoy's handle of the stream whose hook is running.
pub struct Stream {
    envoy: EnvoyFilter,
}

impl Stream {
    /// # Safety
    /// `envoy` must be the stream handle Envoy passed to the running hook, and the `Stream`
    /// must not be used after that hook returns.
    pub unsafe fn new(envoy: EnvoyFilter) -> Stream {
        Stream { envoy }
    }

    pub fn header(&self, side: Side, name: &str) -> Option<String> {
        let mut out = Buffer::NULL;
        let mut count = 0usize;
        // SAFETY: `envoy` is the running hook's stream; `out` and `count` outlive the call.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.envoy,
                side.headers(),
                Buffer::of(name.as_bytes()),
                &mut out,
                0,
                &mut count,
            )
        };
        if !found || count == 0 {
            return None;
        }
        // SAFETY: Envoy's buffer is valid during this hook; it is copied at once.
        Some(String::from_utf8_lossy(unsafe { out.as_slice() }).into_owned())
    }

    /// Every header of one side, in Envoy's order (keys are lower-case).
    pub fn headers(&self, side: Side) -> Vec<(String, String)> {
        // SAFETY: as in `header`.
        let count = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.envoy, side.headers())
        };
        if count == 0 {
            return Vec::new();
        }
        let empty = HttpHeader {
            key_ptr: std::ptr::null(),
            key_len: 0,
            value_ptr: std::ptr::null(),
            value_len: 0,
        };
        let mut raw = vec![empty; count];
        // SAFETY: `raw` has room for `count` entries, as the callback requires.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.envoy,
                side.headers(),
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy filled the entries with buffers valid during this hook.
                let (key, value) = unsafe {
                    (
                        Buffer {
                            ptr: h.key_ptr,
                            len: h.key_len,
                        }
                        .as_slice(),
                        Buffer {
                            ptr: h.value_ptr,
                            len: h.value_len,
                        }
                        .as_slice(),
                    )
                };
                (
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect()
    }

    /// Sets (or with `None` removes) a header.
    pub fn set_header(&self, side: Side, name: &str, value: Option<&str>) {
        let value = value.map_or(Buffer::NULL, |v| Buffer::of(v.as_bytes()));
        // SAFETY: as in `header`; a NULL value removes the header.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.envoy,
                side.headers(),
                Buffer::of(name.as_bytes()),
                value,
            );
        }
    }

    /// A local reply; Envoy sends it instead of forwarding (or instead of the upstream's).
    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let headers: Vec<HttpHeader> = headers
            .iter()
            .map(|(k, v)| HttpHeader {
                key_ptr: k.as_ptr(),
                key_len: k.len(),
                value_ptr: v.as_ptr(),
                value_len: v.len(),
            })
            .collect();
        // SAFETY: every buffer outlives the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.envoy,
                u32::from(status),
                headers.as_ptr(),
                headers.len(),
                Buffer::of(body),
                Buffer::of(details.as_bytes()),
            );
        }
    }

    fn chunks(&self, body_type: u32) -> Vec<Buffer> {
        // SAFETY: as in `header`.
        let count = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.envoy, body_type)
        };
        if count == 0 {
            return Vec::new();
        }
        let mut chunks = vec![Buffer::NULL; count];
        // SAFETY: `chunks` has room for `count` buffers, as the callback requires.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.envoy,
                body_type,
                chunks.as_mut_ptr(),
            )
        };
        if ok {
            chunks
        } else {
            Vec::new()
        }
    }

    fn copy_chunks(&self, body_type: u32, into: &mut Vec<u8>) {
        for chunk in self.chunks(body_type) {
            // SAFETY: Envoy's chunks are valid during this hook; they are copied at once.
            into.extend_from_slice(unsafe { chunk.as_slice() });
        }
    }

    /// The whole body so far: what was buffered, then the chunk of this hook.
    pub fn body(&self, side: Side) -> Vec<u8> {
        let mut body = Vec::new();
        self.copy_chunks(side.buffered_body(), &mut body);
        self.copy_chunks(side.received_body(), &mut body);
        body
    }

    /// The chunk of the running body hook only.
    pub fn received_chunk(&self, side: Side) -> Vec<u8> {
        let mut chunk = Vec::new();
        self.copy_chunks(side.received_body(), &mut chunk);
        chunk
    }

    fn drain_and_append(&self, body_type: u32, replacement: &[u8]) {
        // SAFETY: as in `header`; draining more than the body holds drains it all.
        unsafe {
            abi::envoy_dynamic_module_callback_http_drain_body(self.envoy, body_type, usize::MAX);
            if !replacement.is_empty() {
                abi::envoy_dynamic_module_callback_http_append_body(
                    self.envoy,
                    body_type,
                    Buffer::of(replacement),
                );
            }
        }
    }

    /// Replaces the whole body (on its last hook). It goes where the old one was: into the
    /// buffer if Envoy buffered it, else into this hook's chunk.
    pub fn replace_body(&self, side: Side, replacement: &[u8]) {
        let buffered = !self.chunks(side.buffered_body()).is_empty();
        if buffered {
            // SAFETY: as in `header`.
            unsafe {
                abi::envoy_dynamic_module_callback_http_drain_body(
                    self.envoy,
                    side.received_body(),
                    usize::MAX,
                );
            }
            self.drain_and_append(side.buffered_body(), replacement);
        } else {
            self.drain_and_append(side.received_body(), replacement);
        }
    }

    /// Replaces the chunk of the running body hook (a streamed body).
    pub fn replace_received_chunk(&self, side: Side, replacement: &[u8]) {
        self.drain_and_append(side.received_body(), replacement);
    }

    pub fn clear_route_cache(&self) {
        // SAFETY: as in `header`.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.envoy) }
    }

    pub fn set_metadata_string(&self, namespace: &str, key: &str, value: &str) {
        // SAFETY: as in `header`; Envoy copies the buffers.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                self.envoy,
                Buffer::of(namespace.as_bytes()),
                Buffer::of(key.as_bytes()),
                Buffer::of(value.as_bytes()),
            )
        }
    }

    pub fn set_metadata_number(&self, namespace: &str, key: &str, value: f64) {
        // SAFETY: as above.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_number(
                self.envoy,
                Buffer::of(namespace.as_bytes()),
                Buffer::of(key.as_bytes()),
                value,
            )
        }
    }

    pub fn set_metadata_bool(&self, namespace: &str, key: &str, value: bool) {
        // SAFETY: as above.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
                self.envoy,
                Buffer::of(namespace.as_bytes()),
                Buffer::of(key.as_bytes()),
                value,
            )
        }
    }

    /// The client's IP address (`source.address` without its port).
    pub fn source_ip(&self) -> String {
        let mut out = Buffer::NULL;
        // SAFETY: as in `header`.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.envoy,
                abi::ATTRIBUTE_SOURCE_ADDRESS,
                &mut out,
            )
        };
        if !ok {
            return String::new();
        }
        // SAFETY: Envoy's buffer is valid during this hook; it is copied at once.
        let text = String::from_utf8_lossy(unsafe { out.as_slice() }).into_owned();
        match text.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip().to_string(),
            Err(_) => text,
        }
    }
}

/// The opaque per-stream pointer type Envoy hands back to every hook.
pub type ModulePtr = *const c_void;
