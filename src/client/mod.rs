//! The command-line client in the `sonicgw` binary: people sign in once (`sonicgw login`) and then
//! generate, follow, download and manage videos, users and the audit log over the public HTTP API,
//! like any other API client; unlike `sonicgw admin`, it needs no database access.

pub mod api;
pub mod commands;
pub mod credentials;
pub mod generate;
pub mod terminal;
