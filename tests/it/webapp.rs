//! The web app's server side: its pages and their security headers, the cookie sign-in at
//! `/v1/auth/session` (Origin checked, refresh token only in an HttpOnly cookie, rotation, sign-out
//! revokes), `POST /v1/videos/preview` (stores nothing) and `POST /v1/videos/{id}/rerun`.

use reqwest::header::{HeaderMap, COOKIE, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::videos::{follow, form, no_jobs, problem, submit_ok};

impl TestServer {
    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn session(
        &self,
        path: &str,
        origin: Option<&str>,
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path));
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, format!("sonicgw_refresh={cookie}"));
        }
        request.send().await.unwrap()
    }

    async fn web_sign_in(&self, username: &str, password: &str) -> (String, String) {
        let response = self
            .client
            .post(self.url("/v1/auth/session"))
            .header(ORIGIN, self.origin())
            .form(&[("username", username), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = refresh_cookie(response.headers()).expect("a refresh cookie");
        let body: Value = response.json().await.unwrap();
        (body["access_token"].as_str().unwrap().to_owned(), cookie)
    }
}

/// The value of the `sonicgw_refresh` cookie set by a response, if any.
fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("sonicgw_refresh="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .find(|v| !v.is_empty())
}

fn set_cookie(headers: &HeaderMap) -> String {
    headers[SET_COOKIE].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn web_sign_in_keeps_the_refresh_token_in_an_http_only_strict_cookie_for_the_session_path_only(
) {
    let server = TestServer::start().await;
    let response = server
        .client
        .post(server.url("/v1/auth/session"))
        .header(ORIGIN, server.origin())
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let cookie = set_cookie(response.headers());
    for attribute in [
        "Path=/v1/auth/session",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=1209600",
    ] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP cannot carry a Secure cookie: {cookie}"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    let access = body["access_token"].as_str().unwrap();
    // The bearer API takes the access token as from any other sign-in.
    let me: Value = server.get("/v1/me", access).await.json().await.unwrap();
    assert_eq!(me["username"], "admin");
}

#[tokio::test]
async fn cookie_is_secure_when_a_trusted_proxy_says_the_client_used_https() {
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let response = server
        .client
        .post(server.url("/v1/auth/session"))
        .header(ORIGIN, "https://videos.example")
        .header("host", "videos.example")
        .header("x-forwarded-proto", "https")
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(response.headers());
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

#[tokio::test]
async fn with_a_configured_issuer_only_its_origin_may_sign_in_never_the_host_header() {
    // DNS rebinding: a page at rebind.example, resolved to this server, sends its own name as Host
    // and Origin. With the issuer configured, Host is not trusted.
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.issuer = "https://videos.example".to_owned();
    })
    .await;
    let sign_in = |origin: &'static str, host: &'static str| {
        server
            .client
            .post(server.url("/v1/auth/session"))
            .header(ORIGIN, origin)
            .header("host", host)
            .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
            .send()
    };
    let rebound = sign_in("http://rebind.example", "rebind.example")
        .await
        .unwrap();
    let body = problem(rebound, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "cross_origin");
    let issuer = sign_in("https://videos.example", "rebind.example")
        .await
        .unwrap();
    assert_eq!(issuer.status(), StatusCode::OK);
}

#[tokio::test]
async fn session_routes_refuse_requests_without_this_servers_origin() {
    let server = TestServer::start().await;
    let (_, cookie) = server.web_sign_in("admin", ADMIN_PASSWORD).await;
    for path in ["/v1/auth/session", "/v1/auth/session/refresh"] {
        for origin in [
            None,
            Some("https://evil.example"),
            Some("null"),
            Some("http://127.0.0.1:1"),
        ] {
            let response = server.session(path, origin, Some(&cookie)).await;
            let body = problem(response, StatusCode::FORBIDDEN).await;
            assert_eq!(body["code"], "cross_origin", "{path} {origin:?}");
        }
    }
    let response = server
        .client
        .delete(server.url("/v1/auth/session"))
        .header(ORIGIN, "https://evil.example")
        .header(COOKIE, format!("sonicgw_refresh={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // None of that touched the sign-in: the cookie still refreshes once.
    let response = server
        .session(
            "/v1/auth/session/refresh",
            Some(&server.origin()),
            Some(&cookie),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn cookie_refresh_rotates_and_a_replayed_cookie_ends_the_sign_in() {
    let server = TestServer::start().await;
    let origin = server.origin();
    let (first_access, first) = server.web_sign_in("admin", ADMIN_PASSWORD).await;
    let response = server
        .session("/v1/auth/session/refresh", Some(&origin), Some(&first))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let second = refresh_cookie(response.headers()).expect("a rotated cookie");
    assert_ne!(second, first);
    let body: Value = response.json().await.unwrap();
    let second_access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        server.get("/v1/me", &second_access).await.status(),
        StatusCode::OK
    );

    // The used cookie again (a stolen copy): refused, cleared, and the whole sign-in is revoked.
    let response = server
        .session("/v1/auth/session/refresh", Some(&origin), Some(&first))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(response.headers()).contains("Max-Age=0"));
    for token in [&first_access, &second_access] {
        assert_eq!(
            server.get("/v1/me", token).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let response = server
        .session("/v1/auth/session/refresh", Some(&origin), Some(&second))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // No cookie at all: not signed in.
    let response = server
        .session("/v1/auth/session/refresh", Some(&origin), None)
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn web_sign_out_revokes_the_sign_in_and_clears_the_cookie() {
    let server = TestServer::start().await;
    let origin = server.origin();
    let (access, cookie) = server.web_sign_in("admin", ADMIN_PASSWORD).await;
    let response = server
        .client
        .delete(server.url("/v1/auth/session"))
        .header(ORIGIN, &origin)
        .header(COOKIE, format!("sonicgw_refresh={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = set_cookie(response.headers());
    assert!(
        cleared.starts_with("sonicgw_refresh=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        server.get("/v1/me", &access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let response = server
        .session("/v1/auth/session/refresh", Some(&origin), Some(&cookie))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn web_sign_out_without_the_cookie_ends_the_sign_in_of_the_access_token_it_sends() {
    let server = TestServer::start().await;
    let origin = server.origin();
    let (access, cookie) = server.web_sign_in("admin", ADMIN_PASSWORD).await;
    let (other_access, other_cookie) = server.web_sign_in("admin", ADMIN_PASSWORD).await;
    let response = server
        .client
        .delete(server.url("/v1/auth/session"))
        .header(ORIGIN, &origin)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        server.get("/v1/me", &access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The sign-in's refresh token, in a cookie the request did not carry, is revoked with it.
    let response = server
        .session("/v1/auth/session/refresh", Some(&origin), Some(&cookie))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Another sign-in of the same user is not touched.
    assert_eq!(
        server.get("/v1/me", &other_access).await.status(),
        StatusCode::OK
    );
    let response = server
        .session(
            "/v1/auth/session/refresh",
            Some(&origin),
            Some(&other_cookie),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // A forged or revoked token changes nothing and still clears the cookie.
    for token in ["not-a-token", access.as_str()] {
        let response = server
            .client
            .delete(server.url("/v1/auth/session"))
            .header(ORIGIN, &origin)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{token}");
        assert!(set_cookie(response.headers()).contains("Max-Age=0"));
    }
}

#[tokio::test]
async fn the_app_and_its_files_carry_a_strict_policy() {
    let server = TestServer::start().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/app/main.js", "text/javascript; charset=utf-8"),
        ("/app/app.css", "text/css; charset=utf-8"),
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: {directive} missing from {csp}"
            );
        }
        assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let page = server
        .client
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<script type="module" src="/app/main.js"></script>"#));
}

#[tokio::test]
async fn preview_shows_face_crop_and_real_duration_and_stores_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let response = server
        .client
        .post(server.url("/v1/videos/preview"))
        .bearer_auth(&admin.access)
        .multipart(form("speech_en.mp3", &[("expand_ratio", "0.6")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let preview: Value = response.json().await.unwrap();
    let duration = preview["input"]["audio"]["duration"].as_f64().unwrap();
    assert!((duration - 7.564).abs() < 0.05, "{preview}");
    assert_eq!(preview["params"]["expand_ratio"], 0.6);
    assert_eq!(preview["input"]["image"]["faces_detected"], 1);
    let face = &preview["input"]["image"]["face"];
    let crop = &preview["input"]["image"]["crop"];
    assert!(face["width"].as_u64().unwrap() > 0, "{preview}");
    assert!(
        crop["x"].as_u64() <= face["x"].as_u64(),
        "the crop holds the face: {preview}"
    );
    assert!(
        crop["width"].as_u64() >= face["width"].as_u64(),
        "{preview}"
    );
    assert_eq!(preview["output"]["fps"], 25);

    no_jobs(&server, &admin.access).await;
    let audit: Value = server
        .get("/v1/audit?action=video.create", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 0, "{audit}");
    let uploads = server.dir.path().join("work/uploads");
    if uploads.exists() {
        assert_eq!(
            std::fs::read_dir(&uploads).unwrap().count(),
            0,
            "temporary files left behind"
        );
    }
}

#[tokio::test]
async fn preview_refuses_like_a_submission_naming_the_field_and_code() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "acme", "free").await;
    server
        .create_user(&admin.access, "freddie", "user", Some(&tenant))
        .await;
    let free = server.login("freddie", USER_PASSWORD).await;
    let preview = |token: String, fields: Vec<(&'static str, &'static str)>| {
        let server = &server;
        async move {
            server
                .client
                .post(server.url("/v1/videos/preview"))
                .bearer_auth(token)
                .multipart(form("speech_en.wav", &fields))
                .send()
                .await
                .unwrap()
        }
    };
    let body = problem(
        preview(free.access.clone(), vec![("min_resolution", "1024")]).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "plan_limit");
    assert_eq!(body["errors"][0]["field"], "max_resolution", "{body}");
    let body = problem(
        preview(free.access.clone(), vec![("expand_ratio", "7")]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["errors"][0]["field"], "expand_ratio", "{body}");
    let response = server
        .client
        .post(server.url("/v1/videos/preview"))
        .multipart(form("speech_en.wav", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    no_jobs(&server, &free.access).await;
}

#[tokio::test]
async fn previews_have_a_budget_per_minute_of_their_own() {
    // A preview costs a submission's checks and no quota: without a budget of its own, one user could
    // keep the server's decoders and face scans busy all day.
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        for plan in config.plans.values_mut() {
            plan.previews_per_minute = 2;
        }
    })
    .await;
    let admin = server.admin().await;
    let preview = || {
        server
            .client
            .post(server.url("/v1/videos/preview"))
            .bearer_auth(&admin.access)
            .multipart(form("speech_en.wav", &[]))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(preview().await.unwrap().status(), StatusCode::OK);
    }
    let refused = preview().await.unwrap();
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    let body = problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["code"], "preview_limit");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("2 previews per minute"),
        "{body}"
    );
    // Submissions are not previews: their own rules still apply.
    submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
}

#[tokio::test]
async fn rerun_makes_a_new_job_from_the_stored_inputs_with_new_parameters() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "studio", "pro").await;
    server
        .create_user(&admin.access, "creator", "user", Some(&tenant))
        .await;
    let other = server.create_tenant(&admin.access, "other", "pro").await;
    server
        .create_user(&admin.access, "outsider", "user", Some(&other))
        .await;
    let creator = server.login("creator", USER_PASSWORD).await;
    let first = submit_ok(
        &server,
        &creator.access,
        form("speech_en.wav", &[("seed", "1")]),
    )
    .await;
    let first_id = first["id"].as_str().unwrap();
    follow(&server, &creator.access, first_id).await;

    let response = server
        .post_json(
            &format!("/v1/videos/{first_id}/rerun"),
            &creator.access,
            json!({ "seed": 7, "min_resolution": "256", "expand_ratio": 0.7 }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let second: Value = response.json().await.unwrap();
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["params"]["seed"], 7);
    assert_eq!(second["params"]["min_resolution"], 256);
    assert_eq!(
        second["input"]["audio"]["duration"],
        first["input"]["audio"]["duration"]
    );
    assert_eq!(
        second["input"]["image"]["face"],
        first["input"]["image"]["face"]
    );
    let events = follow(&server, &creator.access, second["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");

    // Bad parameters are refused as for an upload; another tenant's job does not exist for them.
    let body = problem(
        server
            .post_json(
                &format!("/v1/videos/{first_id}/rerun"),
                &creator.access,
                json!({ "seed": -1 }),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "seed", "{body}");
    let outsider = server.login("outsider", USER_PASSWORD).await;
    let response = server
        .post_json(
            &format!("/v1/videos/{first_id}/rerun"),
            &outsider.access,
            json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
