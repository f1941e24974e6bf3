//! The bus's messages on the wire: `1 <origin> <kind> [<job>]`, one line of ASCII, e.g.
//! `1 3f2a...9c c 0190c1b2-...`. `origin` names the process that published it (32 hex digits),
//! `kind` is `c` (changed), `s` (stopped) or `q` (queued, no job). Anything else is malformed.

use std::fmt;
use std::str::FromStr;

use crate::domain::JobId;

/// The longest message accepted: a version, an origin, a kind, a job id and three spaces.
pub const MAX_MESSAGE_BYTES: usize = 1 + 1 + 32 + 1 + 1 + 1 + 36;

/// One process's name on the bus, random per start: a process skips its own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin(u128);

impl Origin {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().as_u128())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What happened, as every process applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The job's row changed: followers re-read it.
    Changed(JobId),
    /// A running job was cancelled or deleted: its worker stops now.
    Stopped(JobId),
    /// A job was queued (or requeued): idle workers and lease requests look for work.
    Queued,
}

/// A message: who published it and what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub origin: Origin,
    pub event: Event,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.event {
            Event::Changed(job) => write!(f, "1 {} c {job}", self.origin),
            Event::Stopped(job) => write!(f, "1 {} s {job}", self.origin),
            Event::Queued => write!(f, "1 {} q", self.origin),
        }
    }
}

/// Why a message on the channel was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("not ASCII text")]
    NotText,
    #[error("not version 1 with an origin, a kind and a job as the kind requires")]
    Shape,
    #[error("the origin is not 32 lower-case hex digits")]
    Origin,
    #[error("the job is not a hyphenated UUID")]
    Job,
}

impl Message {
    /// Parses a message as it arrives from the channel.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(Malformed::TooLong);
        }
        let text = std::str::from_utf8(bytes)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or(Malformed::NotText)?;
        let mut parts = text.split(' ');
        let (Some("1"), Some(origin), Some(kind)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed::Shape);
        };
        let origin = parse_origin(origin)?;
        let job = parts.next();
        if parts.next().is_some() {
            return Err(Malformed::Shape);
        }
        let event = match (kind, job) {
            ("c", Some(job)) => Event::Changed(parse_job(job)?),
            ("s", Some(job)) => Event::Stopped(parse_job(job)?),
            ("q", None) => Event::Queued,
            _ => return Err(Malformed::Shape),
        };
        Ok(Self { origin, event })
    }
}

fn parse_origin(text: &str) -> Result<Origin, Malformed> {
    if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Malformed::Origin);
    }
    u128::from_str_radix(text, 16)
        .map(Origin)
        .map_err(|_| Malformed::Origin)
}

fn parse_job(text: &str) -> Result<JobId, Malformed> {
    // Only the hyphenated form `JobId` prints: no braces, URNs or other spellings of one id.
    if text.len() != 36 {
        return Err(Malformed::Job);
    }
    JobId::from_str(text).map_err(|_| Malformed::Job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_survives_the_wire() {
        let origin = Origin::random();
        let job = JobId::generate();
        for event in [Event::Changed(job), Event::Stopped(job), Event::Queued] {
            let message = Message { origin, event };
            let text = message.to_string();
            assert!(text.len() <= MAX_MESSAGE_BYTES, "{text}");
            assert_eq!(Message::parse(text.as_bytes()), Ok(message));
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let origin = "0123456789abcdef0123456789abcdef";
        let job = "0190c1b2-7d4e-7a00-8000-000000000001";
        let text = |s: String| s.into_bytes();
        let cases: Vec<(Vec<u8>, Malformed)> = vec![
            (b"".to_vec(), Malformed::Shape),
            (b"hello".to_vec(), Malformed::Shape),
            (text(format!("2 {origin} q")), Malformed::Shape),
            (text(format!("1 {origin} q {job}")), Malformed::Shape),
            (text(format!("1 {origin} c")), Malformed::Shape),
            (text(format!("1 {origin} x {job}")), Malformed::Shape),
            (text(format!("1 {origin} q a b")), Malformed::Shape),
            (text(format!("1  {origin} q")), Malformed::Origin),
            (
                b"1 0123456789ABCDEF0123456789ABCDEF q".to_vec(),
                Malformed::Origin,
            ),
            (b"1 0123 q".to_vec(), Malformed::Origin),
            (
                text(format!("1 {origin} c not-a-uuid-at-all-but-36-chars-long!")),
                Malformed::Job,
            ),
            (
                text(format!(
                    "1 {origin} c {{0190c1b2-7d4e-7a00-8000-0000000001}}"
                )),
                Malformed::Job,
            ),
            (
                text(format!("1 {origin} c 0190c1b27d4e7a008000000000000001")),
                Malformed::Job,
            ),
            (vec![b'1', b' ', 0xff, 0xfe], Malformed::NotText),
            ("1 é q".as_bytes().to_vec(), Malformed::NotText),
            (vec![b'1'; MAX_MESSAGE_BYTES + 1], Malformed::TooLong),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                Message::parse(&bytes),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
