//! The baseline of `scripts/bench-auth.sh`: a bare axum server with one route, `GET /healthz`,
//! answering the same small JSON the gateway's does, on the same kind of runtime. What the gateway's
//! `/healthz` costs beyond this is its layers: request ids, the HTTPS policy, metrics and the access log.
//!
//! `cargo run --release --example bare_axum` prints `listening on http://ADDR` (port 0).

use axum::routing::get;
use axum::{Json, Router};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = Router::new().route(
        "/healthz",
        get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
    );
    axum::serve(listener, app).await
}
