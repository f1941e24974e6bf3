//! DPoP (RFC 9449) against the real server: a client that proves possession of a key at the token
//! endpoint gets tokens bound to it, and those tokens work only with fresh, matching proofs. The
//! proofs here are built by hand (P-256 with the `p256` crate, Ed25519 with `ed25519-dalek`), not by
//! the server's own code.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;

/// A client's DPoP key.
enum DpopKey {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl DpopKey {
    fn p256() -> Self {
        DpopKey::P256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    fn ed25519() -> Self {
        DpopKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn alg(&self) -> &'static str {
        match self {
            DpopKey::P256(_) => "ES256",
            DpopKey::Ed25519(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> Value {
        match self {
            DpopKey::P256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                    "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
                })
            }
            DpopKey::Ed25519(key) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            }),
        }
    }

    /// RFC 7638, computed here independently of the server.
    fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let canonical = match self {
            DpopKey::P256(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap()
            ),
            DpopKey::Ed25519(_) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                jwk["x"].as_str().unwrap()
            ),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            DpopKey::P256(key) => {
                use p256::ecdsa::signature::Signer as _;
                let signature: p256::ecdsa::Signature = key.sign(message);
                signature.to_bytes().to_vec()
            }
            DpopKey::Ed25519(key) => {
                use ed25519_dalek::Signer as _;
                key.sign(message).to_bytes().to_vec()
            }
        }
    }

    /// A proof with these claims (and this header, for tampering tests).
    fn proof_with(&self, header: Value, claims: Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    fn header(&self) -> Value {
        json!({ "typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk() })
    }

    /// A fresh proof for `method url`, naming `access_token` when given.
    fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> String {
        let mut claims = json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": method,
            "htu": url,
            "iat": now_s(),
        });
        if let Some(token) = access_token {
            claims["ath"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())));
        }
        self.proof_with(self.header(), claims)
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims of a JWT, unverified (the test only reads what the server put in).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

impl TestServer {
    async fn dpop_sign_in(&self, key: &DpopKey) -> reqwest::Response {
        self.client
            .post(self.url("/v1/auth/token"))
            .header("dpop", key.proof("POST", &self.url("/v1/auth/token"), None))
            .form(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
            ])
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/me` with `Authorization: <scheme> <token>` and an optional proof.
    async fn me_with(&self, scheme: &str, token: &str, proof: Option<String>) -> reqwest::Response {
        let mut request = self
            .client
            .get(self.url("/v1/me"))
            .header(AUTHORIZATION, format!("{scheme} {token}"));
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send().await.unwrap()
    }

    async fn dpop_refresh(&self, refresh_token: &str, proof: Option<String>) -> reqwest::Response {
        let mut request = self.client.post(self.url("/v1/auth/token"));
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap()
    }
}

async fn refused_with(response: reqwest::Response, status: StatusCode) -> (String, Value) {
    assert_eq!(response.status(), status);
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (challenge, response.json().await.unwrap())
}

#[tokio::test]
async fn a_token_bound_to_a_key_works_only_with_fresh_proofs_of_that_key() {
    let server = TestServer::start().await;
    let key = DpopKey::p256();
    let response = server.dpop_sign_in(&key).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "DPoP");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(claims_of(access)["cnf"]["jkt"], key.thumbprint());
    let me_url = server.url("/v1/me");

    // The holder of the key, with a fresh proof for this request.
    let proof = key.proof("GET", &me_url, Some(access));
    let ok = server.me_with("DPoP", access, Some(proof.clone())).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let me: Value = ok.json().await.unwrap();
    assert_eq!(me["username"], "admin");

    // A stolen token alone is worth nothing: as a bearer token, or with no proof.
    let (challenge, body) = refused_with(
        server.me_with("Bearer", access, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert_eq!(body["code"], "invalid_token");
    let (challenge, body) = refused_with(
        server.me_with("DPoP", access, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
    assert_eq!(body["code"], "invalid_dpop_proof");

    // A captured proof is used once.
    let (_, body) = refused_with(
        server.me_with("DPoP", access, Some(proof)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["code"], "invalid_dpop_proof");
    assert!(
        body["detail"].as_str().unwrap().contains("used before"),
        "{body}"
    );

    // Every part of a proof must fit this request and this token.
    let thief = DpopKey::p256();
    let stale = key.proof_with(
        key.header(),
        json!({
            "jti": "old-1", "htm": "GET", "htu": me_url, "iat": now_s() - 600,
            "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(access.as_bytes())),
        }),
    );
    let mut no_typ = key.header();
    no_typ.as_object_mut().unwrap().remove("typ");
    let untyped = key.proof_with(
        no_typ,
        json!({ "jti": "t-1", "htm": "GET", "htu": me_url, "iat": now_s(),
                "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(access.as_bytes())) }),
    );
    let forged_signature = {
        let good = key.proof("GET", &me_url, Some(access));
        let (signed, _) = good.rsplit_once('.').unwrap();
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(thief.sign(signed.as_bytes()))
        )
    };
    for (why, proof) in [
        ("another key", thief.proof("GET", &me_url, Some(access))),
        ("another method", key.proof("POST", &me_url, Some(access))),
        (
            "another path",
            key.proof("GET", &server.url("/v1/videos"), Some(access)),
        ),
        (
            "another server",
            key.proof("GET", "https://elsewhere.example/v1/me", Some(access)),
        ),
        ("no ath", key.proof("GET", &me_url, None)),
        ("another token's ath", key.proof("GET", &me_url, Some("x"))),
        ("ten minutes old", stale),
        ("no typ", untyped),
        ("signed by another key than its jwk", forged_signature),
        ("not a JWT", "garbage".to_owned()),
    ] {
        let response = server.me_with("DPoP", access, Some(proof)).await;
        let (_, body) = refused_with(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["code"], "invalid_dpop_proof", "{why}: {body}");
    }
    // The query string is not part of htu.
    let with_query = key.proof("GET", &format!("{me_url}?x=1"), Some(access));
    assert_eq!(
        server
            .me_with("DPoP", access, Some(with_query))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_bound_refresh_token_is_spent_only_with_its_key_and_stays_bound() {
    let server = TestServer::start().await;
    let key = DpopKey::ed25519();
    let tokens: Value = server.dpop_sign_in(&key).await.json().await.unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let token_url = server.url("/v1/auth/token");

    // Without the key the refresh token is refused, and not used up.
    for proof in [None, Some(DpopKey::p256().proof("POST", &token_url, None))] {
        let response = server.dpop_refresh(refresh, proof).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_dpop_proof", "{body}");
    }
    let response = server
        .dpop_refresh(refresh, Some(key.proof("POST", &token_url, None)))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let renewed: Value = response.json().await.unwrap();
    assert_eq!(renewed["token_type"], "DPoP");
    assert_eq!(
        claims_of(renewed["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.thumbprint()
    );
    // The rotated refresh token is bound too.
    let next = renewed["refresh_token"].as_str().unwrap();
    let response = server.dpop_refresh(next, None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bearer_clients_are_unaffected_and_a_bad_proof_at_sign_in_is_refused() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    assert!(claims_of(&admin.access).get("cnf").is_none());
    assert_eq!(
        server.me_with("Bearer", &admin.access, None).await.status(),
        StatusCode::OK
    );
    // An unbound token cannot be presented as DPoP.
    let key = DpopKey::p256();
    let proof = key.proof("GET", &server.url("/v1/me"), Some(&admin.access));
    let (_, body) = refused_with(
        server.me_with("DPoP", &admin.access, Some(proof)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["code"], "invalid_token");

    // A proof at the token endpoint that does not fit is an error, never a silently unbound token.
    let wrong_url = key.proof("POST", &server.url("/v1/me"), None);
    let response = server
        .client
        .post(server.url("/v1/auth/token"))
        .header("dpop", wrong_url)
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_dpop_proof");

    let metadata: Value = server
        .client
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        metadata["dpop_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("ES256")),
        "{metadata}"
    );
}

#[tokio::test]
async fn with_a_configured_issuer_a_proof_must_name_it_never_the_host_header() {
    // A server that collects proofs for its own URL cannot replay them here by sending its own name
    // as Host: with an issuer configured, only the issuer's (and public_base_url's) URLs count.
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.issuer = "https://videos.example".to_owned();
    })
    .await;
    let sign_in = |proof: String, host: &'static str| {
        server
            .client
            .post(server.url("/v1/auth/token"))
            .header("host", host)
            .header("dpop", proof)
            .form(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
            ])
            .send()
    };
    let key = DpopKey::p256();
    let elsewhere = key.proof("POST", "http://evil.example/v1/auth/token", None);
    let response = sign_in(elsewhere, "evil.example").await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_dpop_proof");
    // The issuer's own URL is accepted, whatever Host says.
    let here = key.proof("POST", "https://videos.example/v1/auth/token", None);
    let response = sign_in(here, "evil.example").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP");
}

#[tokio::test]
async fn a_proof_used_on_one_replica_is_refused_on_another_through_redis() {
    use sonicgw::auth::dpop::{CheckedProof, ProofRejection, ReplayGuard};
    // Two replicas' guards on the real Redis, sharing this test's own key prefix.
    let prefix = format!("sonicgw-test-dpop-{}", uuid::Uuid::new_v4().simple());
    let a = ReplayGuard::shared(&redis_url(), &prefix).await.unwrap();
    let b = ReplayGuard::shared(&redis_url(), &prefix).await.unwrap();
    let proof = CheckedProof {
        jkt: DpopKey::p256().thumbprint(),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    a.first_use(&proof).await.unwrap();
    assert_eq!(b.first_use(&proof).await, Err(ProofRejection::Replayed));
    // Another key's proof with the same jti is its own.
    let other = CheckedProof {
        jkt: DpopKey::p256().thumbprint(),
        ..proof.clone()
    };
    b.first_use(&other).await.unwrap();
    // The keys expire on their own (two minutes): nothing is left behind for good.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:dpop:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 120_000, "{key}: {ttl}");
    }
}
