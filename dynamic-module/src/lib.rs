//! Gantry's Envoy dynamic module (`libgantry.so`, loaded by `envoy.filters.http.dynamic_modules`):
//! the hot part of Gantry's policy inside Envoy, with no gRPC hop.
//!
//! Today it provides API-key authentication from the same `auth` config the ext_authz server
//! uses (the whole Gantry config, YAML or JSON, is the filter's `filter_config` string):
//! credentials are checked by hash, the caller's identity headers overwrite whatever the client
//! sent, and a refusal is a local reply in the client's protocol (OpenAI error or JSON-RPC).
//!
//! `abi` holds the hand-written FFI (the official SDK is not on crates.io); this file is the
//! safe side: every hook runs inside `catch_unwind`, so a panic fails the request (500) and is
//! logged instead of aborting Envoy.

pub mod abi;

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi::{Buffer, EnvoyFilter, HttpHeader};
use gantry_policy::auth::jwt::KeySet;
use gantry_policy::auth::{AuthPolicy, AuthRequest, Decision, JwksSource};
use gantry_policy::ConfigFile;

/// Request headers an auth decision reads (the module cannot list all headers through the
/// callbacks it imports yet).
const READ_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "content-type",
    "origin",
    "user-agent",
    "x-forwarded-for",
    "x-request-id",
];

fn log(level: u32, message: &str) {
    // SAFETY: the message buffer lives for the call; Envoy copies it.
    unsafe { abi::envoy_dynamic_module_callback_log(level, Buffer::of(message.as_bytes())) }
}

/// The filter's compiled config, shared read-only by all worker threads.
pub struct FilterConfig {
    auth: AuthPolicy,
}

impl FilterConfig {
    /// Compiles a Gantry config text; the error names the problem.
    pub fn parse(text: &str) -> Result<FilterConfig, String> {
        let config = ConfigFile::parse(text).map_err(|e| e.to_string())?;
        let auth = config
            .auth
            .as_ref()
            .ok_or("the config has no auth section: the module's filter authenticates callers")?;
        if !auth.jwt.is_empty() {
            return Err(
                "auth.jwt is not supported by the dynamic module yet (use ext_authz for JWTs)"
                    .into(),
            );
        }
        Ok(FilterConfig {
            auth: AuthPolicy::compile(auth),
        })
    }
}

/// No JWT issuers in the module: the key set is always empty, and nothing waits.
struct NoJwks;

impl JwksSource for NoJwks {
    fn current(&self, _issuer: usize) -> Arc<KeySet> {
        Arc::new(KeySet::default())
    }

    fn refetch(&self, _issuer: usize) -> impl std::future::Future<Output = Arc<KeySet>> + Send {
        std::future::ready(Arc::new(KeySet::default()))
    }
}

/// One request's view of Envoy, valid inside one hook.
struct Stream {
    envoy: EnvoyFilter,
}

impl Stream {
    fn request_header(&self, name: &str) -> Option<String> {
        let mut out = Buffer::NULL;
        let mut count = 0usize;
        // SAFETY: `envoy` is the handle of the stream whose hook is running; `out` and
        // `count` outlive the call.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.envoy,
                abi::REQUEST_HEADER,
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
        let bytes = unsafe { out.as_slice() };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let value = value.map_or(Buffer::NULL, |v| Buffer::of(v.as_bytes()));
        // SAFETY: as above; a NULL value removes the header.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.envoy,
                abi::REQUEST_HEADER,
                Buffer::of(name.as_bytes()),
                value,
            );
        }
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
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
                status,
                headers.as_ptr(),
                headers.len(),
                Buffer::of(body),
                Buffer::of(details.as_bytes()),
            );
        }
    }
}

/// The authentication step on request headers; returns the headers status.
fn on_request_headers(config: &FilterConfig, stream: &Stream) -> u32 {
    let headers: HashMap<String, String> = READ_HEADERS
        .iter()
        .filter_map(|name| Some((name.to_string(), stream.request_header(name)?)))
        .collect();
    let path = stream.request_header(":path").unwrap_or_default();
    let method = stream.request_header(":method").unwrap_or_default();
    let host = stream.request_header(":authority").unwrap_or_default();
    let scheme = stream
        .request_header(":scheme")
        .unwrap_or_else(|| "http".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let request = AuthRequest {
        method: &method,
        path: &path,
        host: &host,
        scheme: &scheme,
        headers: &headers,
        source_address: "",
        peer_principal: "",
        peer_certificate: "",
        body: &[],
        now,
    };
    // Without JWT issuers the check never waits: polling it once completes it.
    match futures::executor::block_on(config.auth.check(&request, &NoJwks)) {
        Decision::Allow(allowed) => {
            for name in &allowed.remove_headers {
                stream.set_request_header(name, None);
            }
            for (name, value) in &allowed.set_headers {
                stream.set_request_header(name, Some(value));
            }
            abi::HEADERS_CONTINUE
        }
        Decision::Deny(denial) => {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(challenge) = &denial.www_authenticate {
                headers.push(("www-authenticate", challenge.as_str()));
            }
            stream.send_response(
                u32::from(denial.status),
                &headers,
                &denial.body,
                &format!("gantry_{}", denial.code),
            );
            abi::HEADERS_STOP_ITERATION
        }
    }
}

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
            Ok(config) => Box::into_raw(Box::new(config)) as *const c_void,
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
            drop(unsafe { Box::from_raw(config as *mut FilterConfig) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: EnvoyFilter,
) -> *const c_void {
    // The per-stream object is the shared config itself: the filter keeps no stream state.
    config
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: EnvoyFilter,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    let stream = Stream { envoy };
    let answered = guarded("request_headers", None, || {
        // SAFETY: `module` is the config pointer from config_new, alive until config_destroy,
        // which Envoy calls only after every stream of the config has ended.
        let config = unsafe { &*(module as *const FilterConfig) };
        Some(on_request_headers(config, &stream))
    });
    match answered {
        Some(status) => status,
        None => {
            stream.send_response(
                500,
                &[("content-type", "application/json")],
                br#"{"error":{"message":"internal error in the gateway's module","type":"server_error","param":null,"code":"gantry_module_error"}}"#,
                "gantry_module_panic",
            );
            abi::HEADERS_STOP_ITERATION
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    abi::BODY_CONTINUE
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
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    abi::HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: EnvoyFilter,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    abi::BODY_CONTINUE
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
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_module: *const c_void) {
    // The per-stream pointer is the config's: nothing to free per stream.
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
