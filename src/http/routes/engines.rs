//! `GET /v1/engines`: the configured engines, what they honour, and whether they are healthy.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::domain::Role;
use crate::engines::{Capabilities, Health, InstanceView};
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
    /// Its servers (GPU engines): health, load, VRAM, version, jobs done and measured speed.
    /// Addresses and error details are shown to platform admins only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceView>,
}

/// The engines.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EngineList {
    pub items: Vec<EngineView>,
}

#[utoipa::path(get, path = "/v1/engines", tag = "videos", responses((status = 200, body = EngineList)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<EngineList>, ApiError> {
    let operator = caller.role == Role::PlatformAdmin;
    let mut items = Vec::new();
    for engine in state.videos.engines.all() {
        let capabilities = engine.capabilities();
        let mut instances = engine.instances(operator);
        for instance in &mut instances {
            if !operator {
                instance.last_error = None;
            }
            instance.seconds_per_video_second = Some(
                state
                    .videos
                    .costs
                    .speed(&capabilities.name, Some(&instance.name)),
            );
        }
        items.push(EngineView {
            instances,
            default: capabilities.name == state.videos.settings.default_engine,
            health: engine.health().await,
            capabilities,
        });
    }
    Ok(Json(EngineList { items }))
}
