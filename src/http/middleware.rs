//! Layers every request passes through: request ids, HTTPS policy, metrics and the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::error::{ApiError, InternalCause};
use super::state::AppState;

/// The request's id: the caller's `X-Request-Id` when well-formed, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

fn well_formed_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Assigns the request id, records metrics and logs the request. Outermost layer.
///
/// The request runs inside a `request` span with the request id, the normalised method and the matched
/// route template. Never the path or the query: paths carry ids, signed links carry their signature,
/// and an extension method is the caller's to choose.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| well_formed_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let request_id: Arc<str> = Arc::from(request_id);
    request
        .extensions_mut()
        .insert(RequestId(Arc::clone(&request_id)));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = crate::metrics::method_label(&method),
        route = %route,
    );
    let started = Instant::now();

    let mut response = next.run(request).instrument(span).await;
    // The access-log line is outside the span: it names the request id, method and route itself, so the
    // span's copy of them would only be formatted and written a second time.

    let elapsed = started.elapsed();
    let status = response.status();
    crate::metrics::http_request(&route, &method, status, elapsed);
    // The normalised method: an extension method can be kilobytes long.
    let method = crate::metrics::method_label(&method);
    if let Some(cause) = response.extensions().get::<InternalCause>() {
        tracing::error!(%request_id, %method, %route, status = status.as_u16(), cause = %cause.0, "request failed");
    } else {
        tracing::info!(%request_id, %method, %route, status = status.as_u16(), elapsed_ms = elapsed.as_secs_f64() * 1000.0, "request");
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// With `require_https`, refuses plain-HTTP requests unless they come from loopback or from a trusted
/// proxy that says the client used HTTPS. Adds HSTS when serving TLS.
pub async fn https_policy(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let tls = state.config.tls_enabled();
    if state.config.require_https && !tls {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded_proto = request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let allowed = match peer {
            Some(ip) if state.config.trusted_proxies.contains(&ip) => {
                forwarded_proto.as_deref() == Some("https")
            }
            Some(ip) => ip.is_loopback(),
            None => false,
        };
        if !allowed {
            return ApiError::Forbidden {
                code: "https_required",
                detail: "this service only accepts HTTPS".to_owned(),
            }
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    if tls {
        response.headers_mut().insert(
            "strict-transport-security",
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    response
}

/// Where the `Caller` extractor leaves its rate-limit decision, so that `rate_limit_headers` can put
/// the `RateLimit-*` fields on the response whatever the handler answers.
#[derive(Clone, Default)]
pub struct RateLimitSlot(pub Arc<std::sync::OnceLock<crate::ratelimit::Decision>>);

/// Adds the `RateLimit-*` fields to responses of requests that were counted against a rate limit
/// (those of callers with a user token); other requests (health, JWKS, workers) carry none.
pub async fn rate_limit_headers(mut request: Request, next: Next) -> Response {
    let slot = RateLimitSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(decision) = slot.0.get() {
        if !response.headers().contains_key("ratelimit-limit") {
            super::error::rate_limit_headers(response.headers_mut(), decision);
        }
    }
    response
}

/// The answer for unknown paths: a 404 `not_found` like a missing resource, with a detail that says
/// no route matched, so the two can be told apart.
pub async fn not_found() -> impl IntoResponse {
    ApiError::Rejected {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        detail: "no route matches this path".to_owned(),
        errors: Vec::new(),
    }
}

/// The answer for a known path with the wrong method.
pub fn method_not_allowed() -> Response {
    ApiError::Rejected {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        detail: "this method is not allowed on this path".to_owned(),
        errors: Vec::new(),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use serde_json::Value;
    use tower::ServiceExt;

    #[test]
    fn request_id_must_be_short_and_plain() {
        assert!(super::well_formed_request_id("abc-123_x.y:z"));
        assert!(!super::well_formed_request_id(""));
        assert!(!super::well_formed_request_id("a b"));
        assert!(!super::well_formed_request_id(&"a".repeat(129)));
    }

    /// This thread's log lines, as the JSON formatter of `log_format = "json"` writes them.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        fn event(&self, message: &str) -> Value {
            self.text()
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .find(|event| event["fields"]["message"] == message)
                .unwrap_or_else(|| panic!("no event {message:?} in {}", self.text()))
        }
    }

    /// Sends `request` through a router with `observe` as in `http::router`, capturing every event.
    async fn traced(request: Request<Body>) -> (axum::response::Response, Captured) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = Router::new()
            .route(
                "/v1/files/videos/{file}",
                get(|| async {
                    tracing::info!("inside the handler");
                    "ok"
                }),
            )
            .layer(axum::middleware::from_fn(super::observe));
        let response = app.oneshot(request).await.unwrap();
        (response, captured)
    }

    #[tokio::test]
    async fn handler_events_are_inside_the_request_span() {
        let request = Request::get("/v1/files/videos/0190a1b2.mp4")
            .header("x-request-id", "req-span-1")
            .body(Body::empty())
            .unwrap();
        let (response, captured) = traced(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "req-span-1");
        let span = &captured.event("inside the handler")["span"];
        assert_eq!(span["name"], "request");
        assert_eq!(span["request_id"], "req-span-1");
        assert_eq!(span["method"], "GET");
        assert_eq!(span["route"], "/v1/files/videos/{file}");
        // The access-log line names them itself, outside the span (not formatted twice).
        let access = &captured.event("request");
        assert!(access.get("span").is_none(), "{access}");
        assert_eq!(access["fields"]["request_id"], "req-span-1");
        assert_eq!(access["fields"]["method"], "GET");
        assert_eq!(access["fields"]["route"], "/v1/files/videos/{file}");
    }

    #[tokio::test]
    async fn request_span_never_holds_the_path_query_or_a_raw_method() {
        let signed = "/v1/files/videos/0190a1b2.mp4?expires=1900000000&sig=c2VjcmV0LXNpZ25hdHVyZQ";
        let (response, captured) = traced(Request::get(signed).body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let span = &captured.event("inside the handler")["span"];
        assert_eq!(span["route"], "/v1/files/videos/{file}");
        assert!(span["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        let text = captured.text();
        for leak in ["sig=", "c2VjcmV0", "expires=", "0190a1b2"] {
            assert!(!text.contains(leak), "{leak} was logged: {text}");
        }

        let odd = Request::builder()
            .method("PROPFIND-XYZZY")
            .uri("/v1/files/videos/0190a1b2.mp4")
            .body(Body::empty())
            .unwrap();
        let (response, captured) = traced(odd).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(captured.event("request")["fields"]["method"], "OTHER");
        assert!(!captured.text().contains("XYZZY"), "{}", captured.text());
    }
}
