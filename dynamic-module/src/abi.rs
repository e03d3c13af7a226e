//! Envoy 1.40's dynamic-module C ABI (`v0.2.0`), declared by hand: the official Rust SDK is not
//! on crates.io. Only the callbacks Gantry uses are imported; each name is checked against the
//! pinned Envoy binary's export table (`tests/e2e/dynamic_module.rs` runs `nm -D` on both).
//! Envoy checks names only, never signatures, so the parameter lists matter:
//!
//! - `log`, `http_get_header`, `http_set_header`, `http_send_response` were verified at runtime
//!   on 1.40.0 (`shared/ref/envoy-dynamic-modules.md` §6);
//! - the header-list, body, metadata, route-cache and attribute callbacks are declared as in
//!   Envoy's `abi.h` at ABI `v0.1.0` (the 1.39 cycle). The ABI policy guarantees that a module
//!   built against v0.1.y works with v0.2.x, so these signatures hold for 1.40; the end-to-end
//!   tests exercise every one of them through the real Envoy 1.40.0.
//!
//! Keep this file small and change it only against a new Envoy's abi.h.

use std::ffi::c_void;

/// The ABI version string `envoy_dynamic_module_on_program_init` returns.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `{ptr, length}`, passed by value. As `envoy_buffer` it is Envoy's memory, valid during
/// the current hook only; as `module_buffer` it is the module's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    pub ptr: *const u8,
    pub len: usize,
}

impl Buffer {
    pub const NULL: Buffer = Buffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes an Envoy buffer points at.
    ///
    /// # Safety
    /// `self` must come from Envoy in the current hook (or be NULL).
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees Envoy's buffer is alive for this hook.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// `envoy_dynamic_module_type_module_http_header`, and `envoy_http_header` (the same layout,
/// pointing at Envoy's memory).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpHeader {
    pub key_ptr: *const u8,
    pub key_len: usize,
    pub value_ptr: *const u8,
    pub value_len: usize,
}

/// `http_header_type`.
pub const REQUEST_HEADER: u32 = 0;
pub const RESPONSE_HEADER: u32 = 2;
/// `http_body_type`. "Received" is the chunk of the current body hook; "Buffered" is what
/// earlier `StopIterationAndBuffer` answers kept. On the last call after buffering, Envoy has
/// already moved the last chunk into the buffer (Received is then empty).
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const BUFFERED_REQUEST_BODY: u32 = 1;
pub const RECEIVED_RESPONSE_BODY: u32 = 2;
pub const BUFFERED_RESPONSE_BODY: u32 = 3;
/// `attribute_id` of `source.address` (the 25th attribute of the enum).
pub const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
/// `log_level`.
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
/// `on_http_filter_request_headers` and friends.
pub const HEADERS_CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;
pub const BODY_CONTINUE: u32 = 0;
pub const BODY_STOP_ITERATION_AND_BUFFER: u32 = 1;
pub const BODY_STOP_ITERATION_NO_BUFFER: u32 = 3;
pub const TRAILERS_CONTINUE: u32 = 0;

/// Envoy's per-stream handle.
pub type EnvoyFilter = *mut c_void;

// The callbacks Gantry imports. Every name here must be exported by the pinned Envoy
// (`tests/e2e/dynamic_module.rs` checks it with `nm -D`).
extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: EnvoyFilter,
        header_type: u32,
        key: Buffer,
        out: *mut Buffer,
        index: usize,
        optional_count: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: EnvoyFilter,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: EnvoyFilter,
        status: u32,
        headers: *const HttpHeader,
        header_count: usize,
        body: Buffer,
        details: Buffer,
    );
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: EnvoyFilter,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: EnvoyFilter,
        header_type: u32,
        out: *mut HttpHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: EnvoyFilter,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: EnvoyFilter,
        body_type: u32,
        out: *mut Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_append_body(
        filter: EnvoyFilter,
        body_type: u32,
        data: Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_drain_body(
        filter: EnvoyFilter,
        body_type: u32,
        bytes: usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: EnvoyFilter);
    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: EnvoyFilter,
        namespace: Buffer,
        key: Buffer,
        value: Buffer,
    );
    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_number(
        filter: EnvoyFilter,
        namespace: Buffer,
        key: Buffer,
        value: f64,
    );
    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
        filter: EnvoyFilter,
        namespace: Buffer,
        key: Buffer,
        value: bool,
    );
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: EnvoyFilter,
        attribute_id: u32,
        out: *mut Buffer,
    ) -> bool;
}
