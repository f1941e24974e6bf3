//! Tests for `config.rs` (kept apart to keep that file short).
// figment's `Jail` closures return its (large) error type.
#![allow(clippy::result_large_err)]
use super::*;

#[test]
fn defaults_are_the_embedded_setup() {
    // In a jail: another test sets SONICGW_ variables.
    figment::Jail::expect_with(|_| {
        let config = Config::load(None).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(config.database_url().starts_with("sqlite://"));
        assert_eq!(config.signing_alg().unwrap(), SigningAlg::RS256);
        Ok(())
    });
}

#[test]
fn file_values_and_plans_are_read_and_unknown_keys_refused() {
    figment::Jail::expect_with(|_| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "access_token_ttl_s = 600\n[plans.team]\nmax_resolution = 768\nmax_duration_s = 60\n\
             max_inference_steps = 30\nvideos_per_day = 20\nmax_concurrent_jobs = 2\npriority_weight = 2\n\
             allow_lip_sync_correction = true\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.access_token_ttl_s, 600);
        assert_eq!(
            config.plans().unwrap().get("team").unwrap().max_resolution,
            768
        );
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());

        Ok(())
    });
}

#[test]
fn debug_output_hides_secrets_and_url_passwords() {
    let config = Config {
        hs256_secret: "hs256-secret-value-0123456789abcdef".to_owned(),
        url_signing_secret: "url-signing-secret-value-0123456789".to_owned(),
        database_url: "postgres://gateway:db-password-42@db.internal:5432/sonicgw?sslmode=require&password=query-password-7".to_owned(),
        redis_url: "redis://:redis-password-9@cache.internal:6379/0".to_owned(),
        tls_key: "/etc/sonicgw/tls.key".to_owned(),
        ..Config::default()
    };
    for text in [format!("{config:?}"), format!("{config:#?}")] {
        for secret in [
            "hs256-secret-value",
            "url-signing-secret-value",
            "db-password-42",
            "query-password-7",
            "redis-password-9",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("hs256_secret: \"<redacted>\""), "{text}");
        // What is not secret stays useful.
        assert!(
            text.contains("gateway:REDACTED@db.internal:5432/sonicgw"),
            "{text}"
        );
        assert!(text.contains("sslmode=require"), "{text}");
        assert!(text.contains("cache.internal:6379"), "{text}");
        assert!(text.contains("/etc/sonicgw/tls.key"), "{text}");
    }
    let unset = format!("{:?}", Config::default());
    assert!(unset.contains("hs256_secret: \"\""), "{unset}");
}

#[test]
fn comfyui_settings_come_from_the_environment_and_headers_stay_secret() {
    figment::Jail::expect_with(|jail| {
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(config.default_engine(), "builtin");
        assert_eq!(config.sonic_checkpoint, "svd_xt_1_1.safetensors");
        assert_eq!(config.sonic_unet, "unet.pth");
        assert_eq!(config.sonic_dtype, "fp16");
        assert_eq!(config.sonic_workflow, "", "the built-in graph by default");
        jail.set_env("SONICGW_SONIC_WORKFLOW", "/etc/sonicgw/sonic-api.json");
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(config.sonic_workflow, "/etc/sonicgw/sonic-api.json");
        jail.set_env("SONICGW_COMFYUI_URLS", "http://gpu1:8188, http://gpu2:8188");
        jail.set_env(
            "SONICGW_COMFYUI_HEADERS",
            "Authorization=Bearer proxy-token-31337",
        );
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(
            config.comfyui_urls,
            ["http://gpu1:8188", "http://gpu2:8188"]
        );
        assert_eq!(config.default_engine(), "sonic");
        let text = format!("{config:?}");
        assert!(!text.contains("proxy-token-31337"), "{text}");
        assert!(text.contains("Authorization"), "{text}");
        jail.set_env("SONICGW_DEFAULT_ENGINE", "builtin");
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(config.default_engine(), "builtin");
        jail.set_env("SONICGW_SONIC_DTYPE", "int4");
        assert!(Config::load(None).is_err());
        Ok(())
    });
}

#[test]
fn urls_without_credentials_are_shown_as_they_are() {
    assert_eq!(redacted_url(""), "");
    assert_eq!(
        redacted_url("sqlite:///var/lib/sonicgw/sonicgw.db"),
        "sqlite:///var/lib/sonicgw/sonicgw.db"
    );
    assert_eq!(redacted_url("redis://cache:6379"), "redis://cache:6379");
    assert_eq!(redacted_url("not a url with user:pw@host"), "<redacted>");
}

#[test]
fn environment_overrides_the_file_with_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "login_max_failures = 3\nredis_prefix = \"file\"\n").unwrap();
    figment::Jail::expect_with(|jail| {
        jail.set_env("SONICGW_LOGIN_MAX_FAILURES", "5");
        jail.set_env("SONICGW_REQUIRE_HTTPS", "true");
        jail.set_env("SONICGW_HS256_SECRET", "12345");
        jail.set_env("SONICGW_TRUSTED_PROXIES", "10.0.0.1, 10.0.0.2");
        let config = Config::load(Some(&path)).map_err(|e| e.to_string())?;
        assert_eq!(config.login_max_failures, 5);
        assert_eq!(config.redis_prefix, "file");
        assert!(config.require_https);
        assert_eq!(config.hs256_secret, "12345");
        assert_eq!(
            config.trusted_proxies,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        jail.set_env("SONICGW_WORKERS", "many");
        let err = Config::load(None).unwrap_err().to_string();
        // The error names the key and where the value came from.
        assert!(err.contains("WORKERS") && err.contains("SONICGW_"), "{err}");
        Ok(())
    });
}

#[test]
fn engine_speed_seeds_come_from_a_table_or_the_environment_and_must_be_plausible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[engine_speed_seed]\nsonic = 12.5\n").unwrap();
    figment::Jail::expect_with(|jail| {
        assert!(Config::load(None)
            .map_err(|e| e.to_string())?
            .engine_speed_seed
            .is_empty());
        let config = Config::load(Some(&path)).map_err(|e| e.to_string())?;
        assert_eq!(
            config.engine_speed_seed,
            BTreeMap::from([("sonic".into(), 12.5)])
        );
        jail.set_env("SONICGW_ENGINE_SPEED_SEED", "sonic=18, builtin=0.4");
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(
            config.engine_speed_seed,
            BTreeMap::from([("builtin".into(), 0.4), ("sonic".into(), 18.0)])
        );
        jail.set_env("SONICGW_ENGINE_SPEED_SEED", "sonic=fast");
        assert!(Config::load(None).is_err());
        jail.set_env("SONICGW_ENGINE_SPEED_SEED", "sonic=0");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("engine_speed_seed.sonic"), "{err}");
        Ok(())
    });
}

#[test]
fn pool_and_remote_engine_settings_are_checked() {
    figment::Jail::expect_with(|jail| {
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(
            (
                config.comfyui_max_in_flight,
                config.comfyui_health_interval_s
            ),
            (1, 10)
        );
        jail.set_env("SONICGW_REMOTE_ENGINES", "sonic");
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(config.remote_engines, ["sonic"]);
        assert_eq!(
            config.default_engine(),
            "sonic",
            "jobs go to the remote GPUs"
        );
        jail.set_env("SONICGW_REMOTE_ENGINES", "sonic, builtin");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("remote_engines"), "{err}");
        jail.set_env("SONICGW_REMOTE_ENGINES", "sonic");
        jail.set_env("SONICGW_COMFYUI_MAX_IN_FLIGHT", "0");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("comfyui_max_in_flight"), "{err}");
        jail.set_env("SONICGW_COMFYUI_MAX_IN_FLIGHT", "2");
        jail.set_env("SONICGW_COMFYUI_HEALTH_INTERVAL_S", "0");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("comfyui_health_interval_s"), "{err}");
        Ok(())
    });
}
