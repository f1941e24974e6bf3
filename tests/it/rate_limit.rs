//! The request rate limit per user and per tenant, and the login throttle shared through Redis.

use reqwest::StatusCode;
use serde_json::Value;
use sonicgw::audit::AuditContext;
use sonicgw::config::Config;

use crate::helpers::*;

/// Every plan allows `user` requests per minute per user and `tenant` per tenant.
fn limits(user: u32, tenant: u32) -> impl Fn(&mut Config) + Clone {
    move |c: &mut Config| {
        for plan in c.plans.values_mut() {
            plan.requests_per_minute = user;
            plan.tenant_requests_per_minute = Some(tenant);
        }
    }
}

fn header(response: &reqwest::Response, name: &str) -> u64 {
    response.headers()[name]
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is a number"))
}

/// A user of the default tenant with its own session.
async fn user(server: &TestServer, admin: &Session, name: &str) -> Session {
    server.create_user(&admin.access, name, "user", None).await;
    server.login(name, USER_PASSWORD).await
}

#[tokio::test]
async fn requests_past_the_plan_limit_get_429_with_retry_after_and_ratelimit_fields() {
    let server = TestServer::start_with(Backend::Sqlite, limits(3, 1000)).await;
    let admin = server.admin().await;
    let alice = user(&server, &admin, "alice").await;
    for remaining in [2, 1, 0] {
        let response = server.get("/v1/me", &alice.access).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-limit"), 3);
        assert_eq!(header(&response, "ratelimit-remaining"), remaining);
        assert!(header(&response, "ratelimit-reset") <= 60);
        assert_eq!(response.headers()["ratelimit-policy"], "3;w=60");
    }
    let refused = server.get("/v1/me", &alice.access).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 3 a minute: the next request is allowed within 20 s.
    let retry_after = header(&refused, "retry-after");
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&refused, "ratelimit-limit"), 3);
    assert_eq!(header(&refused, "ratelimit-remaining"), 0);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    // Every route a user reaches counts, whatever it answers.
    assert_eq!(
        server.get("/v1/videos", &alice.access).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Another user of the tenant has a bucket of their own.
    let bob = user(&server, &admin, "bob").await;
    assert_eq!(
        server.get("/v1/me", &bob.access).await.status(),
        StatusCode::OK
    );
    // Health, readiness, JWKS and the metadata are not limited and carry no rate-limit fields.
    for path in [
        "/healthz",
        "/readyz",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
    ] {
        for _ in 0..10 {
            let response = server.client.get(server.url(path)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert!(response.headers().get("ratelimit-limit").is_none());
        }
    }
    // A bad token is refused as such, before any bucket is touched.
    assert_eq!(
        server.get("/v1/me", "not-a-token").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_tenant_bucket_is_shared_by_all_its_users() {
    let server = TestServer::start_with(Backend::Sqlite, limits(100, 6)).await;
    let admin = server.admin().await;
    // The admin's four calls (two users, a tenant, its user) take 4 of the default tenant's 6.
    let alice = user(&server, &admin, "alice").await;
    let bob = user(&server, &admin, "bob").await;
    let other = server.create_tenant(&admin.access, "other", "free").await;
    server
        .create_user(&admin.access, "carol", "user", Some(&other))
        .await;
    let carol = server.login("carol", USER_PASSWORD).await;
    for session in [&alice, &bob] {
        assert_eq!(
            server.get("/v1/me", &session.access).await.status(),
            StatusCode::OK
        );
    }
    let refused = server.get("/v1/me", &alice.access).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "ratelimit-limit"), 6);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("tenant"),
        "{problem}"
    );
    // Another tenant's users are not affected.
    assert_eq!(
        server.get("/v1/me", &carol.access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn worker_routes_are_not_limited_by_user_plans() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        limits(1, 1)(c);
        c.workers = 0;
        c.simulated_engine_ms = 100;
    })
    .await;
    let created = server
        .state()
        .workers
        .create(&AuditContext::cli(), "gpu-1")
        .await
        .unwrap();
    let token: Value = server
        .client
        .post(server.url("/v1/auth/token"))
        .basic_auth(&created.account.client_id, Some(&created.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    for _ in 0..5 {
        let response = server
            .client
            .post(server.url("/v1/worker/lease"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "engines": ["simulated"], "wait_s": 0 }))
            .send()
            .await
            .unwrap();
        assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.status().is_success(), "{}", response.status());
        assert!(response.headers().get("ratelimit-limit").is_none());
    }
}

/// Two servers on one database and key directory, sharing Redis under a prefix of this test's own.
async fn two_replicas(tweak: impl Fn(&mut Config) + Clone) -> (TestServer, TestServer, String) {
    let prefix = format!("sonicgw-test-{}", uuid::Uuid::new_v4().simple());
    let (redis, first_prefix, first_tweak) = (redis_url(), prefix.clone(), tweak.clone());
    let a = TestServer::start_with(Backend::Sqlite, move |c| {
        first_tweak(c);
        c.redis_url = redis;
        c.redis_prefix = first_prefix;
    })
    .await;
    let (database, keys, iss) = (a.database_url(), a.keys_dir(), format!("http://{}", a.addr));
    let (redis, second_prefix) = (redis_url(), prefix.clone());
    let b = TestServer::start_with(Backend::Sqlite, move |c| {
        tweak(c);
        c.redis_url = redis;
        c.redis_prefix = second_prefix;
        c.database_url = database;
        c.keys_dir = keys.display().to_string();
        c.issuer = iss;
    })
    .await;
    (a, b, prefix)
}

async fn delete_prefix(prefix: &str) {
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn replicas_share_the_rate_limit_through_redis() {
    let (a, b, prefix) = two_replicas(limits(4, 1000)).await;
    let admin = a.admin().await;
    let alice = user(&a, &admin, "alice").await;
    for server in [&a, &b, &a, &b] {
        assert_eq!(
            server.get("/v1/me", &alice.access).await.status(),
            StatusCode::OK
        );
    }
    for server in [&a, &b] {
        let refused = server.get("/v1/me", &alice.access).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "ratelimit-limit"), 4);
    }
    // The buckets are in Redis, expiring once they would be full again.
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let user_id = decode_part(&alice.access, 1)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:rl:user:{user_id}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 61_000, "ttl {ttl}");
    assert_eq!(a.state().rate_limiter.local_buckets(), 0);
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn replicas_share_login_failures_and_lockouts_through_redis() {
    let (a, b, prefix) = two_replicas(|c| {
        c.login_max_failures = 3;
        c.login_ip_max_failures = 1000;
    })
    .await;
    for server in [&a, &b, &a] {
        let response = server.try_login("admin", "wrong password!!", None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    // Three failures spread over two replicas lock the account on both, for the right password too.
    for server in [&b, &a] {
        let response = server.try_login("admin", ADMIN_PASSWORD, None).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(header(&response, "retry-after") >= 1);
    }
    // Another account is unaffected, and this process's own map counted nothing.
    let response = b.try_login("nobody", "wrong password!!", None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(a.state().sessions.throttle().is_empty());
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn concurrent_guesses_across_replicas_never_exceed_the_shared_limit() {
    let (a, b, prefix) = two_replicas(|c| {
        c.login_max_failures = 4;
        c.login_ip_max_failures = 1000;
    })
    .await;
    let guesses = (0..12).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        server.try_login("admin", "wrong password!!", None)
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(guesses)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    let verified = statuses
        .iter()
        .filter(|s| **s == StatusCode::BAD_REQUEST)
        .count();
    assert_eq!(verified, 4, "{statuses:?}");
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::BAD_REQUEST || *s == StatusCode::TOO_MANY_REQUESTS));
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn while_redis_is_unreachable_each_replica_limits_on_its_own() {
    let proxy = crate::tcp_proxy::TcpProxy::start(&redis_url()).await;
    let redis_through_proxy = proxy.url.replace("http://", "redis://");
    let prefix = format!("sonicgw-test-{}", uuid::Uuid::new_v4().simple());
    let server_prefix = prefix.clone();
    let server = TestServer::start_with(Backend::Sqlite, move |c| {
        limits(3, 1000)(c);
        c.redis_url = redis_through_proxy;
        c.redis_prefix = server_prefix;
    })
    .await;
    let admin = server.admin().await;
    let alice = user(&server, &admin, "alice").await;
    assert_eq!(
        server.get("/v1/me", &alice.access).await.status(),
        StatusCode::OK
    );
    assert_eq!(server.state().rate_limiter.local_buckets(), 0);

    // Redis gone: requests are neither refused wholesale nor let through unlimited, and do not hang.
    proxy.kill();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(
            server.get("/v1/me", &alice.access).await.status(),
            StatusCode::OK
        );
    }
    let refused = server.get("/v1/me", &alice.access).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(server.state().rate_limiter.local_buckets() > 0);
    proxy.revive().await;
    delete_prefix(&prefix).await;
}
