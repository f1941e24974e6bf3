//! Health, discovery, docs, request ids, metrics, problem responses and HTTPS.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;
use crate::traces::{in_request, span, Traces};

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    let health: Value = server.get_public("/healthz").await;
    assert_eq!(health["status"], "ok");
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"], true);
    assert_eq!(ready["keys"], true);
}

#[tokio::test]
async fn request_id_is_echoed_when_well_formed_and_generated_otherwise() {
    let server = TestServer::start().await;
    let echoed = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let replaced = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(id).is_ok());
    let unauthorized = server
        .client
        .get(server.url("/v1/me"))
        .send()
        .await
        .unwrap();
    assert!(
        unauthorized.headers().contains_key("x-request-id"),
        "also on errors"
    );
}

#[tokio::test]
async fn jwks_publishes_public_keys_only() {
    let server = TestServer::start().await;
    let jwks: Value = server.get_public("/.well-known/jwks.json").await;
    let key = &jwks["keys"][0];
    let (kid, _, _) = server.signing_key();
    assert_eq!(key["kid"], kid.as_str());
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["kty"], "RSA");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(key.get(private).is_none(), "private member {private}");
    }
}

#[tokio::test]
async fn authorization_server_metadata_follows_rfc8414() {
    let server = TestServer::start().await;
    let meta: Value = server
        .get_public("/.well-known/oauth-authorization-server")
        .await;
    let issuer = server.issuer();
    assert_eq!(meta["issuer"], issuer.as_str());
    assert_eq!(meta["token_endpoint"], format!("{issuer}/v1/auth/token"));
    assert_eq!(meta["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
    assert_eq!(
        meta["revocation_endpoint"],
        format!("{issuer}/v1/auth/revoke")
    );
    assert_eq!(
        meta["grant_types_supported"],
        serde_json::json!(["password", "refresh_token", "client_credentials"])
    );
    let token = server.admin().await.access;
    assert_eq!(decode_part(&token, 1)["iss"], issuer.as_str());
}

#[tokio::test]
async fn openapi_document_and_vendored_docs_are_served() {
    let server = TestServer::start().await;
    let doc: Value = server.get_public("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/auth/token",
        "/v1/me",
        "/v1/users/{id}",
        "/v1/audit",
        "/.well-known/jwks.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    for schema in ["Problem", "FieldError"] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "missing schema {schema}"
        );
    }
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        [
            "auth",
            "account",
            "admin",
            "platform",
            "videos",
            "provenance",
            "ops",
            "worker"
        ]
    );
    let docs = server.client.get(server.url("/docs")).send().await.unwrap();
    // Never framed by another site, never leaking a referrer.
    assert_eq!(docs.headers()["x-frame-options"], "DENY");
    assert!(docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert_eq!(docs.headers()["referrer-policy"], "no-referrer");
    let html = docs.text().await.unwrap();
    assert!(html.contains("/docs/swagger-ui-bundle.js"));
    assert!(
        !html.contains("https://"),
        "docs load nothing from elsewhere"
    );
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/init.js",
    ] {
        let response = server.client.get(server.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 50, "{asset}");
    }
}

/// What the router's fallback says; a handler's 404 says "no such resource".
const NO_ROUTE: &str = "no route matches this path";

/// The methods a path item of the document may hold (it may hold other keys, such as `parameters`).
const HTTP_METHODS: [Method; 8] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
    Method::HEAD,
    Method::PATCH,
    Method::TRACE,
];

/// The methods also tried where they are not documented, expecting 405.
const PROBED_METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// A documented path with each `{parameter}` filled with a well-formed dummy value.
fn with_dummy_parameters(path: &str) -> String {
    path.split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some("file") => format!("{}.mp4", uuid::Uuid::new_v4()),
                Some(_) => uuid::Uuid::new_v4().to_string(),
                None => segment.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Why a response did not come from a handler, if it did not.
async fn missed_every_handler(response: reqwest::Response) -> Option<String> {
    match response.status() {
        StatusCode::METHOD_NOT_ALLOWED => Some("405 method not allowed".to_owned()),
        StatusCode::NOT_FOUND => {
            let body: Value = response.json().await.unwrap_or_default();
            (body["detail"] == NO_ROUTE).then(|| format!("the router's fallback: {body}"))
        }
        _ => None,
    }
}

#[tokio::test]
async fn unknown_path_and_unknown_resource_are_both_404_not_found_but_say_which() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let no_route = server
        .client
        .get(server.url("/v1/no-such-collection"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_route.status(), StatusCode::NOT_FOUND);
    let problem: Value = no_route.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");
    assert_eq!(problem["detail"], NO_ROUTE);
    let no_resource = server
        .get(
            &format!("/v1/users/{}", uuid::Uuid::new_v4()),
            &admin.access,
        )
        .await;
    assert_eq!(no_resource.status(), StatusCode::NOT_FOUND);
    let problem: Value = no_resource.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");
    assert_eq!(problem["detail"], "no such resource");
}

#[tokio::test]
async fn router_serves_exactly_the_documented_operations_and_the_undocumented_routes() {
    let server = TestServer::start().await;
    let doc: Value = server.get_public("/openapi.json").await;
    let paths = doc["paths"].as_object().expect("the document has paths");
    let documented_methods = |item: &Value| -> Vec<Method> {
        HTTP_METHODS
            .into_iter()
            .filter(|method| item.get(method.as_str().to_lowercase()).is_some())
            .collect()
    };
    let documented: usize = paths
        .values()
        .map(|item| documented_methods(item).len())
        .sum();
    assert!(documented > 0, "the document lists no operations");

    let mut missed = Vec::new();
    let mut undocumented_answers = Vec::new();
    for (path, item) in paths {
        let methods = documented_methods(item);
        let url = server.url(&with_dummy_parameters(path));
        for method in HTTP_METHODS {
            let is_documented = methods.contains(&method);
            if !is_documented && !PROBED_METHODS.contains(&method) {
                continue;
            }
            let response = server
                .client
                .request(method.clone(), &url)
                .send()
                .await
                .unwrap();
            let status = response.status();
            if is_documented {
                if let Some(why) = missed_every_handler(response).await {
                    missed.push(format!("{method} {path}: {why}"));
                }
            } else if status != StatusCode::METHOD_NOT_ALLOWED {
                undocumented_answers.push(format!("{method} {path}: {status}"));
            } else {
                // The problem document says what the status line says.
                let body: Value = response.json().await.unwrap_or_default();
                if body["status"] != 405 || body["code"] != "method_not_allowed" {
                    undocumented_answers.push(format!("{method} {path}: 405 with {body}"));
                }
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} of the {documented} documented operations reach no handler:\n{}",
        missed.len(),
        missed.join("\n")
    );
    assert!(
        undocumented_answers.is_empty(),
        "methods outside the {documented} documented operations answer other than 405:\n{}",
        undocumented_answers.join("\n")
    );

    for (path, _) in sonicgw::http::undocumented_routes() {
        assert!(
            doc["paths"].get(path).is_none(),
            "{path} is registered as undocumented but is among the {documented} documented operations"
        );
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "undocumented route {path} (besides the {documented} documented operations)"
        );
    }
}

#[tokio::test]
async fn metrics_listener_counts_requests_and_auth_failures() {
    let server = TestServer::start().await;
    server
        .client
        .get(server.url("/v1/me"))
        .bearer_auth("a.b.c")
        .send()
        .await
        .unwrap();
    server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("auth_failures_total{reason=\"malformed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}")
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket{route=\"/v1/me\""));
    // Metrics are not on the API listener.
    let api = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    let problem: Value = api.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");
}

#[tokio::test]
async fn require_https_refuses_plain_http_behind_a_proxy_unless_forwarded_as_https() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.require_https = true;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let plain = server
        .client
        .get(server.url("/healthz"))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::FORBIDDEN);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["code"], "https_required");
    let missing = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let forwarded = server
        .client
        .get(server.url("/healthz"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), StatusCode::OK);
}

#[tokio::test]
async fn require_https_lets_direct_loopback_clients_through() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.require_https = true).await;
    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn serves_tls_with_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.tls_cert = cert_path.display().to_string();
        c.tls_key = key_path.display().to_string();
        c.require_https = true;
    })
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", server.addr.port());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    let meta: Value = client
        .get(format!(
            "https://localhost:{}/.well-known/oauth-authorization-server",
            server.addr.port()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta["issuer"].as_str().unwrap().starts_with("https://"));
}

#[tokio::test]
async fn internal_details_never_reach_the_client() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    // Break the database under the running server: requests that need it fail with a bare 500.
    let db = RawDb::open(&server.database_url()).await;
    db.execute("DROP TABLE users").await;
    let response = server.get("/v1/users", &admin.access).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "internal");
    assert_eq!(body["detail"], "an internal error occurred");
    assert!(!body.to_string().to_lowercase().contains("users"), "{body}");
}

#[tokio::test]
async fn handler_events_carry_the_request_id_and_route_template_never_the_path() {
    let server = TestServer::start().await;
    let traces = Traces::capture();
    let job = "0190f0e0-1111-7000-8000-00000000beef";
    let response = server
        .client
        .get(server.url(&format!("/v1/videos/{job}")))
        .header("x-request-id", "trace-ops-1")
        .bearer_auth("not-a-jwt-but-secret-looking")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["x-request-id"], "trace-ops-1");

    // Logged by the `Caller` extractor, inside the handler's route.
    let ours = |line: &Value| in_request(line, "trace-ops-1");
    let refused = traces.event_where("access token refused", ours);
    let request = span(&refused, "request");
    assert_eq!(request["request_id"], "trace-ops-1");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["route"], "/v1/videos/{id}");
    let access = traces.event_where("request", ours);
    assert_eq!(access["fields"]["request_id"], "trace-ops-1");
    assert_eq!(access["fields"]["status"], 401);
    let verify = &traces
        .closed("token.verify")
        .into_iter()
        .find(ours)
        .expect("the token check was traced");
    assert_eq!(verify["span"]["outcome"], "rejected");
    assert_eq!(verify["span"]["reason"], "malformed");
    assert_eq!(span(verify, "request")["request_id"], "trace-ops-1");
    let text = traces.text();
    for leak in [job, "not-a-jwt"] {
        assert!(!text.contains(leak), "{leak} was logged:\n{text}");
    }
}

#[tokio::test]
async fn token_verification_records_its_outcome_and_subject_never_the_token_or_its_jti() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let claims = decode_part(&admin.access, 1);
    let traces = Traces::capture();
    let response = server.get("/v1/me", &admin.access).await;
    assert_eq!(response.status(), StatusCode::OK);

    let verify = &traces
        .closed("token.verify")
        .into_iter()
        .find(|line| line["span"]["user_id"] == claims["sub"])
        .expect("the token check was traced");
    assert_eq!(verify["span"]["outcome"], "accepted");
    assert_eq!(verify["span"]["user_id"], claims["sub"]);
    assert!(verify["span"].get("reason").is_none(), "{verify}");
    assert_eq!(span(verify, "request")["route"], "/v1/me");
    let text = traces.text();
    let signature = admin.access.rsplit('.').next().unwrap();
    for leak in [
        admin.access.as_str(),
        signature,
        claims["jti"].as_str().unwrap(),
    ] {
        assert!(!text.contains(leak), "{leak} was logged:\n{text}");
    }
}
