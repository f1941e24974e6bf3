//! `sonicgw worker`: a remote worker on a GPU (or CPU) host. It runs the engines next to it and
//! talks to the gateway only through the worker protocol (`/v1/worker/*`) with a service account's
//! token: no database, no signing keys. `client` is the protocol, `worker` the lanes that run jobs.

pub mod client;
pub mod worker;
