//! `GET /v1/engines`: the configured engines, what they honour, and whether they are healthy.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::engines::{Capabilities, Health};
use crate::http::caller::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// One engine.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EngineView {
    #[serde(flatten)]
    pub capabilities: Capabilities,
    pub health: Health,
    /// Whether jobs go here when `engine` is not given.
    pub default: bool,
}

/// The engines.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EngineList {
    pub items: Vec<EngineView>,
}

#[utoipa::path(get, path = "/v1/engines", tag = "videos", responses((status = 200, body = EngineList)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, _: Caller) -> Result<Json<EngineList>, ApiError> {
    let mut items = Vec::new();
    for engine in state.videos.engines.all() {
        let capabilities = engine.capabilities();
        items.push(EngineView {
            default: capabilities.name == state.videos.settings.default_engine,
            health: engine.health().await,
            capabilities,
        });
    }
    Ok(Json(EngineList { items }))
}
