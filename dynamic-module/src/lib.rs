//! Gantry's Envoy dynamic module (`libgantry.so`, loaded by `envoy.filters.http.dynamic_modules`):
//! the hot part of Gantry's policy inside Envoy, with no gRPC hop.
//!
//! The filter's `filter_config` is a Gantry config (JSON, or YAML) with the same model as the
//! rest of Gantry; `gantry envoy-config --mode module` renders it. It provides API-key
//! authentication, model aliasing and rewrite, request guards, and usage extraction from JSON
//! and SSE replies into dynamic metadata (see `filter`). Budgets and JWTs need the ext_proc and
//! ext_authz servers: a config with them is refused at load, with the reason logged.
//!
//! `abi` holds the hand-written FFI (the official SDK is not on crates.io), `envoy` the safe
//! wrapper around it, `filter` the logic. Every hook runs inside `catch_unwind`, so a panic
//! fails the request (a 500 in the client's protocol when a reply can still be sent) and is
//! logged instead of aborting Envoy.

pub mod abi;
pub mod envoy;
pub mod filter;

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi::{Buffer, EnvoyFilter, HttpHeader};
use envoy::{log, Stream};
use filter::{FilterConfig, StreamFilter};

/// Runs a hook body; a panic is logged and answered with `on_panic`.
fn guarded<T>(hook: &str, on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            log(
                abi::LOG_ERROR,
                &format!("gantry module: {hook} panicked; failing the request"),
            );
            on_panic
        }
    }
}

const PANIC_BODY: &[u8] = br#"{"error":{"message":"internal error in the gateway's module","type":"server_error","param":null,"code":"gantry_module_error"}}"#;

/// The per-stream object behind `module`.
///
/// # Safety
/// `module` must be a pointer `on_http_filter_new` returned and `destroy` has not freed.
/// Envoy runs one stream's hooks one at a time on its worker thread, so the `&mut` is unique.
unsafe fn stream_filter<'a>(module: *const c_void) -> &'a mut StreamFilter {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut *(module as *mut StreamFilter) }
}

/// A request-side hook: a panic answers 500 (the request is not forwarded), or with
/// `failure_mode: open` lets the request go on unprocessed.
fn request_hook(
    hook: &str,
    envoy: EnvoyFilter,
    module: *const c_void,
    statuses: (u32, u32),
    body: impl FnOnce(&mut StreamFilter, &Stream) -> u32,
) -> u32 {
    let (go_on, stop) = statuses;
    // SAFETY: `envoy` is the running hook's stream handle.
    let stream = unsafe { Stream::new(envoy) };
    // SAFETY: `module` came from on_http_filter_new for this stream.
    let fails_open = unsafe { stream_filter(module) }.fails_open();
    let answered = guarded(hook, None, || {
        // SAFETY: as above; the reference above is no longer used.
        let filter = unsafe { stream_filter(module) };
        Some(body(filter, &stream))
    });
    answered.unwrap_or_else(|| {
        if fails_open {
            return go_on;
        }
        stream.send_response(
            500,
            &[("content-type", "application/json")],
            PANIC_BODY,
            "gantry_module_panic",
        );
        stop
    })
}

/// A response-side hook: a panic lets the response through untouched.
fn response_hook(
    hook: &str,
    envoy: EnvoyFilter,
    module: *const c_void,
    pass: u32,
    body: impl FnOnce(&mut StreamFilter, &Stream) -> u32,
) -> u32 {
    // SAFETY: as in `request_hook`.
    let stream = unsafe { Stream::new(envoy) };
    guarded(hook, pass, || {
        // SAFETY: as in `request_hook`.
        let filter = unsafe { stream_filter(module) };
        body(filter, &stream)
    })
}

// ---- The exported hooks (all 21 that Envoy 1.40 requires of an HTTP filter). ----

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    abi::ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: *mut c_void,
    _name: Buffer,
    config: Buffer,
) -> *const c_void {
    guarded("config_new", std::ptr::null(), || {
        // SAFETY: Envoy's config buffer is valid during this hook.
        let text = String::from_utf8_lossy(unsafe { config.as_slice() }).into_owned();
        match FilterConfig::parse(&text) {
            Ok(config) => {
                log(abi::LOG_INFO, "gantry module: filter config loaded");
                Box::into_raw(Box::new(Arc::new(config))) as *const c_void
            }
            Err(e) => {
                log(
                    abi::LOG_ERROR,
                    &format!("gantry module: invalid filter_config: {e}"),
                );
                std::ptr::null()
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded("config_destroy", (), || {
        if !config.is_null() {
            // SAFETY: the pointer came from Box::into_raw in config_new and is freed once.
            drop(unsafe { Box::from_raw(config as *mut Arc<FilterConfig>) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: EnvoyFilter,
) -> *const c_void {
    guarded("new", std::ptr::null(), || {
        // SAFETY: `config` came from config_new and lives until config_destroy, which Envoy
        // calls only after every stream of the config is gone.
        let config = unsafe { &*(config as *const Arc<FilterConfig>) };
        Box::into_raw(Box::new(StreamFilter::new(config.clone()))) as *const c_void
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: EnvoyFilter,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    request_hook(
        "request_headers",
        envoy,
        module,
        (abi::HEADERS_CONTINUE, abi::HEADERS_STOP_ITERATION),
        |filter, stream| filter.on_request_headers(stream, end_of_stream),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: EnvoyFilter,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    request_hook(
        "request_body",
        envoy,
        module,
        (abi::BODY_CONTINUE, abi::BODY_STOP_ITERATION_NO_BUFFER),
        |filter, stream| filter.on_request_body(stream, end_of_stream),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: EnvoyFilter,
    _module: *const c_void,
) -> u32 {
    abi::TRAILERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: EnvoyFilter,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    response_hook(
        "response_headers",
        envoy,
        module,
        abi::HEADERS_CONTINUE,
        |filter, stream| filter.on_response_headers(stream, end_of_stream),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: EnvoyFilter,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    response_hook(
        "response_body",
        envoy,
        module,
        abi::BODY_CONTINUE,
        |filter, stream| filter.on_response_body(stream, end_of_stream),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: EnvoyFilter,
    _module: *const c_void,
) -> u32 {
    abi::TRAILERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy: EnvoyFilter,
    _module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    guarded("destroy", (), || {
        if !module.is_null() {
            // SAFETY: the pointer came from Box::into_raw in on_http_filter_new; Envoy
            // destroys each stream once.
            drop(unsafe { Box::from_raw(module as *mut StreamFilter) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const HttpHeader,
    _header_count: usize,
    _body_chunks: *const Buffer,
    _chunk_count: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _stream_id: u64,
    _headers: *const HttpHeader,
    _header_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _stream_id: u64,
    _data: *const Buffer,
    _chunk_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _stream_id: u64,
    _trailers: *const HttpHeader,
    _trailer_count: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: EnvoyFilter,
    _module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: EnvoyFilter,
    _module: *const c_void,
) {
}
