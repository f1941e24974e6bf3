//! Integration tests: each starts the real server on port 0 (SQLite in a temp dir, or a fresh
//! PostgreSQL database) and speaks HTTP to it.

mod helpers;
mod traces;

mod admin;
mod api_contract;
mod audit;
mod builtin_e2e;
mod builtin_render;
mod cli;
mod cluster;
mod deploy_files;
mod dpop;
mod eta;
mod exposure;
mod fake_comfyui;
mod fuzz_corpus;
mod gpu_pool;
mod hostile_media;
mod job_bus;
mod labels;
mod migrations;
mod object_storage;
mod ops;
mod provenance;
mod queue;
mod rate_limit;
mod recordings;
mod redis_replicas;
mod remote_worker;
mod s3;
mod security_auth;
mod sessions;
mod shutdown;
mod sonic;
mod storage;
mod tcp_proxy;
mod throttle;
mod tokens;
mod verifier;
mod videos;
mod videos_storage;
mod webapp;
mod webhooks;
