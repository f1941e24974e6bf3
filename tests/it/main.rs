//! Integration tests: each starts the real server on port 0 (SQLite in a temp dir, or a fresh
//! PostgreSQL database) and speaks HTTP to it.

mod helpers;
mod traces;

mod admin;
mod audit;
mod builtin_e2e;
mod builtin_render;
mod cli;
mod deploy_files;
mod eta;
mod exposure;
mod fake_comfyui;
mod gpu_pool;
mod hostile_media;
mod labels;
mod migrations;
mod ops;
mod queue;
mod redis_replicas;
mod remote_worker;
mod security_auth;
mod sessions;
mod shutdown;
mod sonic;
mod storage;
mod tcp_proxy;
mod throttle;
mod tokens;
mod videos;
mod webapp;
mod webhooks;
