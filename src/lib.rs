//! Sonic Gateway: a multi-tenant, authenticated service in front of the Sonic talking-head model.
//!
//! Layout: `http` (routes, the caller extractor, errors), `auth` (keys, tokens, passwords, sessions,
//! revocation), `accounts` (tenant and user management rules), `domain` (validated types), `storage`
//! (the `Store` trait with SQLite and PostgreSQL backends), `audit` (the hash-chained log), `app`
//! (wiring), `cli` (the `sonicgw` command).

pub mod accounts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engines;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod media;
pub mod metrics;
pub mod net;
pub mod provenance;
pub mod ratelimit;
pub mod redis_script;
pub mod remote;
pub mod storage;
pub mod time;
pub mod videos;
