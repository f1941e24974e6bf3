//! The web app at `/`: a single page of plain ES modules and CSS under `web/`, compiled into the binary
//! (nothing is fetched from elsewhere) and served with a strict Content-Security-Policy. It uses the
//! public API like any client; its sign-in is `/v1/auth/session` (`routes/session.rs`).

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};

use super::state::AppState;

/// Scripts, styles and media from this origin only; no inline script or style, no framing, no referrer
/// (signed links must not leak to anyone), forms post nowhere (the page's script sends requests).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; \
font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_str!(concat!("../../web/", $file)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/app/app.css", "app.css", "text/css; charset=utf-8"),
    asset!("/app/icon.svg", "icon.svg", "image/svg+xml"),
    asset!("/app/main.js", "js/main.js", JS),
    asset!("/app/api.js", "js/api.js", JS),
    asset!("/app/i18n.js", "js/i18n.js", JS),
    asset!("/app/dom.js", "js/dom.js", JS),
    asset!("/app/signin.js", "js/signin.js", JS),
    asset!("/app/create.js", "js/create.js", JS),
    asset!("/app/job.js", "js/job.js", JS),
    asset!("/app/history.js", "js/history.js", JS),
    asset!("/app/admin.js", "js/admin.js", JS),
];

/// The headers every page and asset of the app carries.
pub fn security_headers() -> [(HeaderName, HeaderValue); 6] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        // Revalidated on every load: a new binary serves new files at the same paths.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

fn serve(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    for (name, value) in security_headers() {
        headers.insert(name, value);
    }
    response
}

/// The app's routes: each embedded file at its path.
pub fn routes() -> impl Iterator<Item = (&'static str, MethodRouter<AppState>)> {
    ASSETS
        .iter()
        .map(|asset| (asset.path, get(move || async move { serve(asset) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_app_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in ASSETS {
            for line in asset.body.lines() {
                let Some(rest) = line.split(" from \"").nth(1) else {
                    continue;
                };
                let Some(module) = rest.split('"').next() else {
                    continue;
                };
                let path = format!("/app/{}", module.trim_start_matches("./"));
                assert!(
                    served.contains(&path.as_str()),
                    "{} imports {module}, which is not served",
                    asset.path
                );
            }
        }
    }

    /// The keys of one dictionary (`const en = {` ... `};`) in `i18n.js`.
    fn dictionary_keys(source: &str, name: &str) -> Vec<String> {
        let start = source
            .find(&format!("const {name} = {{"))
            .expect("dictionary");
        let body = &source[start..];
        let body = &body[..body.find("\n};").expect("dictionary end")];
        let mut keys: Vec<String> = body
            .lines()
            .filter_map(|line| line.trim().strip_prefix('"'))
            .filter_map(|rest| rest.split_once("\":"))
            .map(|(key, _)| key.to_owned())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn every_string_exists_in_english_and_chinese() {
        let i18n = ASSETS.iter().find(|a| a.path == "/app/i18n.js").unwrap();
        let english = dictionary_keys(i18n.body, "en");
        let chinese = dictionary_keys(i18n.body, "zh");
        assert!(english.len() > 100, "{}", english.len());
        assert_eq!(english, chinese);
        for asset in ASSETS {
            for (at, _) in asset.body.match_indices("t(\"") {
                // `t(` itself, not `split(` or `.at(`.
                let before = asset.body[..at].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' || before == '.' {
                    continue;
                }
                let key = &asset.body[at + 3..];
                let key = &key[..key.find('"').unwrap()];
                assert!(
                    english.iter().any(|k| k == key),
                    "{} uses {key}, which has no translation",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn no_asset_has_inline_script_or_a_third_party_origin() {
        let index = ASSETS.iter().find(|a| a.path == "/").unwrap();
        for (at, _) in index.body.match_indices("<script") {
            let tag = &index.body[at..at + index.body[at..].find('>').unwrap()];
            assert!(
                tag.contains(" src=\"/app/"),
                "inline or foreign script: {tag}"
            );
        }
        for asset in ASSETS {
            // XML namespace names are identifiers, never fetched.
            let body = asset.body.replace("http://www.w3.org/", "");
            for scheme in ["http://", "https://", "//cdn"] {
                assert!(
                    !body.contains(scheme),
                    "{} names a foreign origin ({scheme})",
                    asset.path
                );
            }
        }
    }
}
