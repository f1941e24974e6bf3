//! Route handlers, one module per resource.

pub mod audit;
pub mod auth;
pub mod engines;
pub mod files;
pub mod me;
pub mod ops;
pub mod provenance;
pub mod session;
pub mod tenants;
pub mod users;
pub mod videos;
pub mod webhooks;
pub mod worker;
