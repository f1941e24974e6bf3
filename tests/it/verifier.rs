//! The issuer/verifier split: an issuer with the private keys and a verifier (`jwks_url`) that holds
//! none, on the same database, in one test. The verifier's JWKS requests go through a relay that
//! counts them and can play an issuer that is down or answers too much.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sonicgw::auth::keys::{rotate, SigningAlg};

use crate::helpers::*;

/// How the relay answers.
const UP: u8 = 0;
const DOWN: u8 = 1;
const HUGE: u8 = 2;

struct RelayState {
    target: String,
    fetches: AtomicU64,
    mode: AtomicU8,
}

/// A JWKS endpoint in front of the issuer's: counts requests, forwards them, or fails on demand.
struct JwksRelay {
    url: String,
    state: Arc<RelayState>,
}

impl JwksRelay {
    async fn start(issuer: &TestServer) -> Self {
        let state = Arc::new(RelayState {
            target: issuer.url("/.well-known/jwks.json"),
            fetches: AtomicU64::new(0),
            mode: AtomicU8::new(UP),
        });
        let app = axum::Router::new()
            .route("/jwks.json", axum::routing::get(relay))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/jwks.json"),
            state,
        }
    }

    fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn set(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }
}

async fn relay(State(state): State<Arc<RelayState>>) -> axum::response::Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    match state.mode.load(Ordering::SeqCst) {
        DOWN => AxumStatus::SERVICE_UNAVAILABLE.into_response(),
        HUGE => {
            // Valid JSON, past the 256 KiB cap.
            let padding = "x".repeat(300 * 1024);
            axum::Json(json!({ "keys": [], "padding": padding })).into_response()
        }
        _ => {
            let body = reqwest::get(&state.target)
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            ([("content-type", "application/json")], body).into_response()
        }
    }
}

/// An issuer, a relay to its JWKS, and a verifier on the issuer's database with its own data
/// directory (no key directory shared).
async fn issuer_and_verifier() -> (TestServer, JwksRelay, TestServer) {
    let issuer = TestServer::start().await;
    let relay = JwksRelay::start(&issuer).await;
    let database = issuer.database_url();
    let iss = format!("http://{}", issuer.addr);
    let url = relay.url.clone();
    let verifier = TestServer::start_with(Backend::Sqlite, |c| {
        c.database_url = database;
        c.issuer = iss;
        c.jwks_url = url;
    })
    .await;
    (issuer, relay, verifier)
}

fn kid(token: &str) -> String {
    decode_part(token, 0)["kid"].as_str().unwrap().to_owned()
}

/// Rotates the issuer's key and has it sign with the new one at once (it would within a minute).
fn rotate_issuer(issuer: &TestServer) -> String {
    let kid = rotate(&issuer.keys_dir(), SigningAlg::RS256).unwrap();
    issuer.state().tokens.reload_keys().unwrap();
    kid
}

#[tokio::test]
async fn verifier_without_private_keys_accepts_issuer_tokens_and_refuses_forged_ones() {
    let (issuer, _relay, verifier) = issuer_and_verifier().await;
    let admin = issuer.admin().await;
    assert_eq!(
        verifier.get("/v1/me", &admin.access).await.status(),
        StatusCode::OK
    );
    // Everything else works: an admin route on the shared database.
    let users = verifier.get("/v1/users", &admin.access).await;
    assert_eq!(users.status(), StatusCode::OK);

    // No private key anywhere in the verifier's data directory.
    assert!(!verifier.state().tokens.can_issue());
    let keys_dir = verifier.keys_dir();
    let key_files = std::fs::read_dir(&keys_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(key_files, 0, "{} holds key files", keys_dir.display());

    // The token endpoints live on the issuer only.
    for path in [
        "/v1/auth/token",
        "/v1/auth/revoke",
        "/v1/auth/logout",
        "/login",
    ] {
        let response = verifier
            .client
            .post(verifier.url(path))
            .form(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let openapi: Value = verifier.get_public("/openapi.json").await;
    assert!(openapi["paths"].get("/v1/auth/token").is_none());

    // The verifier publishes the keys it accepts.
    let published: Value = verifier.get_public("/.well-known/jwks.json").await;
    assert_eq!(published["keys"][0]["kid"], kid(&admin.access).as_str());

    // A token with the right issuer and audience, signed by another key: under its own kid, and
    // under the issuer's kid.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_iss = format!("http://{}", issuer.addr);
    let rogue = TestServer::start_on(rogue_dir, |c| c.issuer = rogue_iss).await;
    let forged = rogue.admin().await;
    assert_eq!(
        decode_part(&forged.access, 1)["iss"],
        decode_part(&admin.access, 1)["iss"]
    );
    assert_eq!(
        verifier.get("/v1/me", &forged.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let claims = decode_part(&admin.access, 1);
    let forged_with_issuer_kid = rogue.forge(json!({ "kid": kid(&admin.access) }), &claims);
    let response = verifier.get("/v1/me", &forged_with_issuer_kid).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("signature"), "{challenge}");
}

#[tokio::test]
async fn revocation_on_the_issuer_is_refused_by_the_verifier() {
    let (issuer, _relay, verifier) = issuer_and_verifier().await;
    let admin = issuer.admin().await;
    assert_eq!(
        verifier.get("/v1/me", &admin.access).await.status(),
        StatusCode::OK
    );
    let response = issuer
        .client
        .post(issuer.url("/v1/auth/revoke"))
        .form(&[("token", admin.access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The embedded default shares revocations through the database, polled every second.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = verifier.get("/v1/me", &admin.access).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the verifier still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rotation_is_picked_up_on_an_unknown_kid_at_most_once_per_30_seconds() {
    let (issuer, relay, verifier) = issuer_and_verifier().await;
    assert_eq!(relay.fetches(), 1, "one fetch at start");
    let first = issuer.admin().await;
    assert_eq!(
        verifier.get("/v1/me", &first.access).await.status(),
        StatusCode::OK
    );
    assert_eq!(relay.fetches(), 1, "a known kid costs no fetch");

    // `sonicgw keys rotate` on the issuer: the verifier learns the new key on its first token.
    let second_kid = rotate_issuer(&issuer);
    let second = issuer.admin().await;
    assert_eq!(kid(&second.access), second_kid);
    assert_eq!(
        verifier.get("/v1/me", &second.access).await.status(),
        StatusCode::OK
    );
    assert_eq!(relay.fetches(), 2);
    // The old key keeps verifying until its tokens expire.
    assert_eq!(
        verifier.get("/v1/me", &first.access).await.status(),
        StatusCode::OK
    );

    // Within 30 s of that fetch, unknown kids (a second rotation, made-up ones) fetch nothing.
    rotate_issuer(&issuer);
    let third = issuer.admin().await;
    let made_up = issuer.forge(
        json!({ "kid": "made-up-kid" }),
        &decode_part(&third.access, 1),
    );
    for _ in 0..5 {
        for token in [&third.access, &made_up] {
            assert_eq!(
                verifier.get("/v1/me", token).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
    }
    assert_eq!(
        relay.fetches(),
        2,
        "unknown kids within 30 s must not fetch"
    );

    // 30 s later (the verifier's clock, advanced instead of slept), the next unknown kid fetches.
    let jwks = verifier.state().tokens.remote_jwks().unwrap();
    jwks.clock().advance(Duration::from_secs(30));
    assert_eq!(
        verifier.get("/v1/me", &third.access).await.status(),
        StatusCode::OK
    );
    assert_eq!(relay.fetches(), 3);
}

#[tokio::test]
async fn cached_keys_keep_verifying_while_the_issuer_is_down_or_answers_too_much() {
    let (issuer, relay, verifier) = issuer_and_verifier().await;
    let admin = issuer.admin().await;
    for mode in [DOWN, HUGE] {
        relay.set(mode);
        // The periodic refresh fails and keeps the keys it had (stale-while-error).
        let refreshed = verifier.state().tokens.refresh_keys().await;
        assert!(refreshed.is_err(), "mode {mode}");
        assert_eq!(
            verifier.get("/v1/me", &admin.access).await.status(),
            StatusCode::OK,
            "mode {mode}"
        );
        let ready = verifier
            .client
            .get(verifier.url("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "mode {mode}");
    }
    // An unknown kid while the issuer is down: refused, and the cached keys are still there.
    rotate_issuer(&issuer);
    let rotated = issuer.admin().await;
    assert_eq!(
        verifier.get("/v1/me", &rotated.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        verifier.get("/v1/me", &admin.access).await.status(),
        StatusCode::OK
    );
    // Back up: the next refresh brings the new key.
    relay.set(UP);
    verifier.state().tokens.refresh_keys().await.unwrap();
    assert_eq!(
        verifier.get("/v1/me", &rotated.access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn verifier_started_while_the_issuer_is_down_is_not_ready_until_it_has_keys() {
    let issuer = TestServer::start().await;
    let relay = JwksRelay::start(&issuer).await;
    relay.set(DOWN);
    let database = issuer.database_url();
    let iss = format!("http://{}", issuer.addr);
    let url = relay.url.clone();
    let verifier = TestServer::start_with(Backend::Sqlite, |c| {
        c.database_url = database;
        c.issuer = iss;
        c.jwks_url = url;
    })
    .await;
    let ready = verifier
        .client
        .get(verifier.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let admin = issuer.admin().await;
    assert_eq!(
        verifier.get("/v1/me", &admin.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    relay.set(UP);
    verifier.state().tokens.refresh_keys().await.unwrap();
    assert_eq!(
        verifier.get("/v1/me", &admin.access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn jwks_url_needs_an_explicit_issuer_and_an_asymmetric_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifier.toml");
    std::fs::write(&path, "jwks_url = \"http://127.0.0.1:9/jwks.json\"\n").unwrap();
    let err = sonicgw::config::Config::load(Some(&path)).unwrap_err();
    assert!(err.to_string().contains("issuer"), "{err}");
    std::fs::write(
        &path,
        "jwks_url = \"ftp://issuer/jwks.json\"\nissuer = \"http://issuer\"\n",
    )
    .unwrap();
    let err = sonicgw::config::Config::load(Some(&path)).unwrap_err();
    assert!(err.to_string().contains("http"), "{err}");
    std::fs::write(
        &path,
        "jwks_url = \"http://issuer/jwks.json\"\nissuer = \"http://issuer\"\n\
         signing_alg = \"HS256\"\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
    )
    .unwrap();
    let err = sonicgw::config::Config::load(Some(&path)).unwrap_err();
    assert!(err.to_string().contains("HS256"), "{err}");
}
