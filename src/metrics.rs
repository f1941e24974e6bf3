//! Prometheus metrics, served on their own listener (default 127.0.0.1:9464).

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ],
                )
                .expect("valid buckets")
                .set_buckets_for_metric(
                    Matcher::Full("ffmpeg_process_duration_seconds".to_owned()),
                    &[
                        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    ],
                )
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours then stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Counts a request and records its latency. Every label has a small, fixed set of values: a label value
/// taken from the request would let any client add series without bound (each kept until restart).
///
/// `route` must be a matched route template or `unmatched`, never the request path.
pub fn http_request(route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
    metrics::counter!(
        "http_requests_total",
        "route" => route.to_owned(),
        "method" => method_label(method),
        "status" => status_label(status),
    )
    .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route.to_owned())
        .record(elapsed.as_secs_f64());
}

/// The method as a label: the standard methods by name, any extension method as `OTHER`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The status code as a label (a `StatusCode` is always three digits, so at most 900 values).
fn status_label(status: StatusCode) -> String {
    status.as_u16().to_string()
}

/// Counts a refused credential by reason (`expired`, `bad_signature`, `wrong_password`, ...). Reasons are
/// fixed codes, hence `&'static str`: never text from the request.
pub fn auth_failure(reason: &'static str) {
    metrics::counter!("auth_failures_total", "reason" => reason).increment(1);
}

/// Counts a login refused by the throttle. Deliberately without labels (not the username, not the
/// address): those are the attacker's to choose. Such refusals are not audited; this is their record.
pub fn login_throttled() {
    metrics::counter!("auth_login_throttled_total").increment(1);
}

/// Counts a JWKS fetched from the issuer (a verifier's key refresh).
pub fn jwks_refreshed() {
    metrics::counter!("auth_jwks_refreshes_total").increment(1);
}

/// Counts a request refused by the request rate limit, by which bucket ran out (`user` or `tenant`).
pub fn rate_limited(bucket: &'static str) {
    metrics::counter!("http_rate_limited_total", "bucket" => bucket).increment(1);
}

/// Counts a rate-limit decision taken in process because the shared store (Redis) failed.
pub fn rate_limit_fallback() {
    metrics::counter!("http_rate_limit_fallbacks_total").increment(1);
}

/// Counts a finished-video download by how it was authorised (`bearer` or `signed_link`).
pub fn video_download(via: &'static str) {
    metrics::counter!("video_downloads_total", "via" => via).increment(1);
}

/// Counts an ended ffmpeg/ffprobe process and records how long it ran. `program` (`ffmpeg`, `ffprobe`),
/// `what` (the step: `encode`, `probe`, ...) and `outcome` (`success`, `failure`, `timeout`, `killed`)
/// are fixed names from `media::ffmpeg`, never arguments or paths.
pub fn ffmpeg_process(
    program: &'static str,
    what: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    metrics::counter!(
        "ffmpeg_processes_total",
        "program" => program,
        "what" => what,
        "outcome" => outcome,
    )
    .increment(1);
    metrics::histogram!(
        "ffmpeg_process_duration_seconds",
        "program" => program,
        "what" => what,
        "outcome" => outcome,
    )
    .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_methods_are_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        for raw in ["PROPFIND", "get", "XYZZY", &"A".repeat(4096)] {
            let method = Method::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "OTHER", "{raw:.20}");
        }
    }
}
