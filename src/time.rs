//! Wall-clock time. Stored and passed-around instants are `UnixMillis`; token claims and signed links
//! keep Unix seconds as plain `i64`, because that is their wire format.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

const MS_PER_DAY: i64 = 24 * 3600 * 1000;

/// An instant as milliseconds since the Unix epoch (UTC): how every time is stored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(i64);

impl UnixMillis {
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: Self = Self(0);

    /// The instant `ms` milliseconds after the epoch (a stored value, or a test's fixed time).
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// The instant `secs` seconds after the epoch (a token's `exp`).
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch, as stored.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch, truncated as integer division does.
    pub const fn as_secs(self) -> i64 {
        self.0 / 1000
    }

    /// `self + duration`, stopping at the largest instant instead of overflowing.
    pub fn saturating_add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration_ms(duration)))
    }

    /// `self - duration`, stopping at the smallest instant instead of overflowing.
    pub fn saturating_sub_duration(self, duration: Duration) -> Self {
        Self(self.0.saturating_sub(duration_ms(duration)))
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn saturating_sub(self, earlier: Self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// Midnight (UTC) at the start of this instant's day.
    pub const fn start_of_utc_day(self) -> Self {
        Self(self.0 - self.0.rem_euclid(MS_PER_DAY))
    }

    /// RFC 3339 in UTC, with milliseconds when there are any; empty when out of range.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    }

    /// Parses RFC 3339 (any offset), truncating below the millisecond.
    pub fn parse_rfc3339(value: &str) -> Option<Self> {
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| Self((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl std::ops::Add<Duration> for UnixMillis {
    type Output = Self;
    fn add(self, duration: Duration) -> Self {
        self.saturating_add(duration)
    }
}

impl std::ops::Sub<Duration> for UnixMillis {
    type Output = Self;
    fn sub(self, duration: Duration) -> Self {
        self.saturating_sub_duration(duration)
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<DB: Database> Type<DB> for UnixMillis
where
    i64: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <i64 as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <i64 as Type<DB>>::compatible(ty)
    }
}

impl<'q, DB: Database> Encode<'q, DB> for UnixMillis
where
    i64: Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<'q, DB>>::encode_by_ref(&self.0, buf)
    }

    fn size_hint(&self) -> usize {
        <i64 as Encode<'q, DB>>::size_hint(&self.0)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for UnixMillis
where
    i64: Decode<'r, DB>,
{
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        <i64 as Decode<'r, DB>>::decode(value).map(Self)
    }
}

/// Now.
pub fn now_ms() -> UnixMillis {
    UnixMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
}

/// Now, in Unix seconds.
pub fn now_s() -> i64 {
    now_ms().as_secs()
}

/// A monotonic clock for intervals (refresh bounds, rate-limit windows) that tests move forward
/// instead of sleeping; in production nothing advances it, so it is `Instant::now()`.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: std::sync::atomic::AtomicU64,
}

impl Clock {
    /// Now, plus however far the clock was advanced.
    pub fn now(&self) -> std::time::Instant {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Instant::now() + Duration::from_millis(offset)
    }

    /// Moves the clock forward (tests).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms
            .fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::UnixMillis;

    #[test]
    fn rfc3339_round_trips_milliseconds() {
        let at = UnixMillis::from_millis(1_795_000_000_123);
        assert_eq!(UnixMillis::parse_rfc3339(&at.to_rfc3339()), Some(at));
        assert_eq!(UnixMillis::parse_rfc3339("yesterday"), None);
        assert_eq!(UnixMillis::EPOCH.to_rfc3339(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn adding_and_subtracting_durations_saturate() {
        let at = UnixMillis::from_millis(10_000);
        assert_eq!(at + Duration::from_secs(5), UnixMillis::from_millis(15_000));
        assert_eq!(
            at - Duration::from_millis(250),
            UnixMillis::from_millis(9_750)
        );
        assert_eq!(
            UnixMillis::from_millis(i64::MAX - 1) + Duration::from_secs(1),
            UnixMillis::from_millis(i64::MAX)
        );
        assert_eq!(
            UnixMillis::from_millis(i64::MIN + 1) - Duration::from_secs(1),
            UnixMillis::from_millis(i64::MIN)
        );
        assert_eq!(at + Duration::MAX, UnixMillis::from_millis(i64::MAX));
    }

    #[test]
    fn elapsed_is_zero_when_not_after() {
        let earlier = UnixMillis::from_millis(1_000);
        let later = UnixMillis::from_millis(3_500);
        assert_eq!(later.saturating_sub(earlier), Duration::from_millis(2_500));
        assert_eq!(earlier.saturating_sub(later), Duration::ZERO);
        assert_eq!(earlier.saturating_sub(earlier), Duration::ZERO);
    }

    #[test]
    fn seconds_convert_both_ways() {
        assert_eq!(
            UnixMillis::from_secs(1_700),
            UnixMillis::from_millis(1_700_000)
        );
        assert_eq!(UnixMillis::from_millis(1_700_999).as_secs(), 1_700);
        assert_eq!(
            UnixMillis::from_secs(i64::MAX),
            UnixMillis::from_millis(i64::MAX)
        );
    }

    #[test]
    fn start_of_utc_day_is_midnight() {
        let day = 24 * 3600 * 1000;
        let noon = UnixMillis::from_millis(20_000 * day + day / 2);
        assert_eq!(
            noon.start_of_utc_day(),
            UnixMillis::from_millis(20_000 * day)
        );
        let midnight = UnixMillis::from_millis(20_000 * day);
        assert_eq!(midnight.start_of_utc_day(), midnight);
        assert_eq!(
            UnixMillis::from_millis(-1).start_of_utc_day(),
            UnixMillis::from_millis(-day)
        );
        assert!(noon.start_of_utc_day().to_rfc3339().ends_with("T00:00:00Z"));
    }

    #[test]
    fn serialises_as_a_plain_integer() {
        let at = UnixMillis::from_millis(1_795_000_000_123);
        assert_eq!(serde_json::to_string(&at).unwrap(), "1795000000123");
        assert_eq!(
            serde_json::from_str::<UnixMillis>("1795000000123").unwrap(),
            at
        );
    }
}
