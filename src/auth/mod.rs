//! Authentication: signing keys, access tokens, passwords, sessions, revocation and login throttling.

pub mod dpop;
pub mod jwks;
pub mod keys;
pub mod password;
pub mod revocation;
pub mod sessions;
pub mod shared_throttle;
pub mod throttle;
pub mod tokens;
pub mod workers;
