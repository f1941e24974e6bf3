//! Every way a bearer token must be refused, each on its own; and that a refused request runs no
//! handler code.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn refused(server: &TestServer, token: &str, why: &str) {
    assert_invalid_token(server.get("/v1/me", token).await, why).await;
}

#[tokio::test]
async fn accepts_a_token_it_issued() {
    let server = TestServer::start().await;
    let session = server.admin().await;
    let header = decode_part(&session.access, 0);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "RS256");
    let claims = decode_part(&session.access, 1);
    for claim in [
        "iss", "aud", "sub", "tid", "role", "plan", "scope", "iat", "nbf", "exp", "jti",
    ] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(
        claims.as_object().unwrap().len(),
        11,
        "no other claims: {claims}"
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1800
    );
    let response = server.get("/v1/me", &session.access).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn accepts_a_forged_copy_of_valid_claims_signed_with_the_real_key() {
    // Guards the forging helper itself: it must produce tokens the server accepts when nothing is wrong.
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    let token = server.forge(json!({}), &claims);
    assert_eq!(server.get("/v1/me", &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn time_claims_at_the_ends_of_i64_are_checked_not_overflowed() {
    // `exp + leeway` overflowed (a panic in a debug build, so the connection dropped): found while
    // writing the token_claims fuzz target (scripts/fuzz.sh), which signs what it generates.
    let server = TestServer::start().await;
    let mut claims = server.valid_claims().await;
    claims["exp"] = json!(i64::MAX);
    let token = server.forge(json!({}), &claims);
    assert_eq!(server.get("/v1/me", &token).await.status(), StatusCode::OK);
    claims["nbf"] = json!(i64::MAX);
    let token = server.forge(json!({}), &claims);
    refused(&server, &token, "nbf at the end of time").await;
}

#[tokio::test]
async fn rejects_alg_none_in_four_spellings() {
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    let (kid, _, _) = server.signing_key();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({ "alg": alg, "typ": "at+jwt", "kid": kid });
        let token = format!("{}.{}.", b64_json(&header), b64_json(&claims));
        refused(&server, &token, alg).await;
    }
}

#[tokio::test]
async fn rejects_stripped_signature() {
    let server = TestServer::start().await;
    let session = server.admin().await;
    let (head, _) = session.access.rsplit_once('.').unwrap();
    refused(&server, &format!("{head}."), "empty signature").await;
    refused(&server, head, "two segments").await;
}

#[tokio::test]
async fn rejects_tampered_payload() {
    let server = TestServer::start().await;
    let session = server.admin().await;
    let mut claims = decode_part(&session.access, 1);
    claims["role"] = "platform_admin".into();
    claims["tid"] = uuid::Uuid::now_v7().to_string().into();
    let parts: Vec<&str> = session.access.split('.').collect();
    let token = format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2]);
    refused(&server, &token, "tampered payload").await;
}

#[tokio::test]
async fn rejects_hs256_signed_with_the_rs256_public_key_as_secret() {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    let (kid, _, pem) = server.signing_key();
    let public_pem = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .unwrap()
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
    let token = sign_hs256(&header, &claims, public_pem.as_bytes());
    refused(&server, &token, "HS256 with public key").await;
}

#[tokio::test]
async fn rejects_unknown_kid() {
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    refused(
        &server,
        &server.forge(json!({ "kid": "no-such-key" }), &claims),
        "unknown kid",
    )
    .await;
    refused(
        &server,
        &server.forge(json!({ "kid": null }), &claims),
        "no kid",
    )
    .await;
}

#[tokio::test]
async fn rejects_kid_path_traversal() {
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    let (kid, _, _) = server.signing_key();
    for kid in [
        format!("../keys/{kid}"),
        format!("../keys/{kid}.json"),
        "../../../../etc/passwd".to_owned(),
        "/dev/null".to_owned(),
    ] {
        refused(&server, &server.forge(json!({ "kid": kid }), &claims), &kid).await;
    }
}

#[tokio::test]
async fn rejects_embedded_key_headers() {
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    let (_, _, pem) = server.signing_key();
    let jwks: Value = server.get_public("/.well-known/jwks.json").await;
    let jwk = jwks["keys"][0].clone();
    for (name, value) in [
        ("jwk", jwk),
        ("jku", json!("http://127.0.0.1:1/jwks.json")),
        ("x5u", json!("http://127.0.0.1:1/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        // Signed with the real key: the header member alone must cause the refusal.
        let header =
            json!({ "alg": "RS256", "typ": "at+jwt", "kid": jwks["keys"][0]["kid"], name: value });
        refused(&server, &sign_rs256(&header, &claims, &pem), name).await;
    }
}

#[tokio::test]
async fn rejects_expired_token() {
    let server = TestServer::start().await;
    let mut claims = server.valid_claims().await;
    let now = sonicgw::time::now_s();
    claims["iat"] = (now - 4000).into();
    claims["nbf"] = (now - 4000).into();
    claims["exp"] = (now - 120).into();
    refused(&server, &server.forge(json!({}), &claims), "expired").await;
}

#[tokio::test]
async fn rejects_token_with_future_nbf() {
    let server = TestServer::start().await;
    let mut claims = server.valid_claims().await;
    claims["nbf"] = (sonicgw::time::now_s() + 600).into();
    refused(
        &server,
        &server.forge(json!({}), &claims),
        "nbf in the future",
    )
    .await;
}

#[tokio::test]
async fn rejects_token_issued_in_the_future() {
    let server = TestServer::start().await;
    let mut claims = server.valid_claims().await;
    claims["iat"] = (sonicgw::time::now_s() + 600).into();
    refused(
        &server,
        &server.forge(json!({}), &claims),
        "iat in the future",
    )
    .await;
}

#[tokio::test]
async fn rejects_token_missing_each_required_claim() {
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    for claim in [
        "iss", "aud", "exp", "nbf", "iat", "sub", "jti", "tid", "role", "plan", "scope",
    ] {
        let mut without = claims.clone();
        without.as_object_mut().unwrap().remove(claim);
        let response = server
            .get("/v1/me", &server.forge(json!({}), &without))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{claim}");
        let body: Value = response.json().await.unwrap();
        // Told apart from a malformed token: the reason names the missing claim case.
        assert_eq!(
            body["detail"], "the token lacks a required claim",
            "{claim}: {body}"
        );
    }
}

#[tokio::test]
async fn rejects_token_whose_jti_is_not_a_valid_token_id() {
    // The jti ends up in Redis keys and space-separated pub/sub messages: only ids we could have issued pass.
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    for jti in [
        json!(""),
        json!("a b"),
        json!("x:revoked:y"),
        json!("j".repeat(65)),
        json!(7),
    ] {
        let mut bad = claims.clone();
        bad["jti"] = jti.clone();
        let response = server.get("/v1/me", &server.forge(json!({}), &bad)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{jti}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["detail"], "the token is not a well-formed JWT",
            "{jti}: {body}"
        );
    }
}

#[tokio::test]
async fn rejects_wrong_issuer() {
    let server = TestServer::start().await;
    let mut claims = server.valid_claims().await;
    claims["iss"] = "https://evil.example".into();
    refused(&server, &server.forge(json!({}), &claims), "wrong iss").await;
}

#[tokio::test]
async fn rejects_wrong_audience() {
    let server = TestServer::start().await;
    let mut claims = server.valid_claims().await;
    claims["aud"] = "some-other-api".into();
    refused(&server, &server.forge(json!({}), &claims), "wrong aud").await;
}

#[tokio::test]
async fn rejects_wrong_or_missing_typ() {
    let server = TestServer::start().await;
    let claims = server.valid_claims().await;
    refused(
        &server,
        &server.forge(json!({ "typ": "JWT" }), &claims),
        "typ JWT",
    )
    .await;
    refused(
        &server,
        &server.forge(json!({ "typ": "refresh+jwt" }), &claims),
        "typ refresh",
    )
    .await;
    refused(
        &server,
        &server.forge(json!({ "typ": null }), &claims),
        "no typ",
    )
    .await;
}

#[tokio::test]
async fn rejects_refresh_token_used_as_bearer() {
    let server = TestServer::start().await;
    let session = server.admin().await;
    refused(&server, &session.refresh, "refresh token as bearer").await;
}

#[tokio::test]
async fn rejects_oversized_token_before_parsing() {
    let server = TestServer::start().await;
    let mut claims = server.valid_claims().await;
    claims["pad"] = "x".repeat(9 * 1024).into();
    // Validly signed, so only the size can be the reason.
    refused(&server, &server.forge(json!({}), &claims), "oversized").await;
}

#[tokio::test]
async fn rejects_token_of_disabled_user() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let id = server
        .create_user(&admin.access, "carol", "user", None)
        .await;
    let carol = server.login("carol", USER_PASSWORD).await;
    assert_eq!(
        server.get("/v1/me", &carol.access).await.status(),
        StatusCode::OK
    );
    let response = server
        .patch_json(
            &format!("/v1/users/{id}"),
            &admin.access,
            json!({ "disabled": true }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    refused(&server, &carol.access, "disabled user").await;
    assert_eq!(
        server.refresh(&carol.refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn rejects_token_of_deleted_user() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let id = server
        .create_user(&admin.access, "dave", "user", None)
        .await;
    let dave = server.login("dave", USER_PASSWORD).await;
    assert_eq!(
        server.get("/v1/me", &dave.access).await.status(),
        StatusCode::OK
    );
    let response = server
        .delete(&format!("/v1/users/{id}"), &admin.access)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    refused(&server, &dave.access, "deleted user").await;
}

#[tokio::test]
async fn missing_token_is_a_bearer_challenge_without_error() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(server.url("/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"sonicgw\""
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "missing_token");
}

#[tokio::test]
async fn refused_token_runs_no_handler_code() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let mut claims = decode_part(&admin.access, 1);
    claims["exp"] = (sonicgw::time::now_s() - 120).into();
    let expired = server.forge(json!({}), &claims);
    let response = server
        .post_json(
            "/v1/users",
            &expired,
            json!({ "username": "mallory", "password": USER_PASSWORD }),
        )
        .await;
    assert_invalid_token(response, "expired admin token").await;
    let users: Value = server
        .get("/v1/users", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin"]);
}

#[tokio::test]
async fn rotated_key_signs_new_tokens_while_old_tokens_keep_verifying() {
    let server = TestServer::start().await;
    let before = server.admin().await;
    let old_kid = decode_part(&before.access, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_kid =
        sonicgw::auth::keys::rotate(&server.keys_dir(), sonicgw::auth::keys::SigningAlg::RS256)
            .unwrap();
    server.state().tokens.reload_keys().unwrap();
    let after = server.admin().await;
    assert_eq!(decode_part(&after.access, 0)["kid"], new_kid.as_str());
    assert_eq!(
        server.get("/v1/me", &before.access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        server.get("/v1/me", &after.access).await.status(),
        StatusCode::OK
    );
    let jwks: Value = server.get_public("/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
}

#[tokio::test]
async fn eddsa_and_es256_tokens_verify_and_publish_matching_jwks() {
    for alg in ["EdDSA", "ES256"] {
        let server =
            TestServer::start_with(Backend::Sqlite, |c| c.signing_alg = alg.to_owned()).await;
        let session = server.admin().await;
        assert_eq!(decode_part(&session.access, 0)["alg"], alg);
        assert_eq!(
            server.get("/v1/me", &session.access).await.status(),
            StatusCode::OK,
            "{alg}"
        );
        let jwks: Value = server.get_public("/.well-known/jwks.json").await;
        assert_eq!(jwks["keys"][0]["alg"], alg);
        assert_eq!(jwks["keys"][0]["use"], "sig");
    }
}

#[tokio::test]
async fn hs256_is_used_only_with_a_long_configured_secret_and_never_published() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.signing_alg = "HS256".to_owned();
        c.hs256_secret = "an explicitly configured secret of 32+ bytes".to_owned();
    })
    .await;
    let session = server.admin().await;
    assert_eq!(decode_part(&session.access, 0)["alg"], "HS256");
    assert_eq!(
        server.get("/v1/me", &session.access).await.status(),
        StatusCode::OK
    );
    let jwks: Value = server.get_public("/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 0);

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), None);
    config.signing_alg = "HS256".to_owned();
    config.hs256_secret = "too short".to_owned();
    assert!(
        sonicgw::app::start(config).await.is_err(),
        "a short secret must refuse to start"
    );
}
