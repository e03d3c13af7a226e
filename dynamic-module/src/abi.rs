//! Envoy 1.40's dynamic-module C ABI (`v0.2.0`), declared by hand: the official Rust SDK is not
//! on crates.io. Only the callbacks Gantry uses are imported; each was checked against the
//! pinned Envoy binary's export table (the `abi_imports` test runs `nm -D` on both), and the
//! signatures against `shared/ref/envoy-dynamic-modules.md` §5–6. Envoy checks names only, never
//! signatures: keep this file small and change it only against a new Envoy's abi.h.

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

/// `envoy_dynamic_module_type_module_http_header`.
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
/// `log_level`.
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
/// `on_http_filter_request_headers` and friends.
pub const HEADERS_CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;
pub const BODY_CONTINUE: u32 = 0;
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
}
