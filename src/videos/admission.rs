//! Admission to intake: probing an upload (image decode, full audio decode, face detection) costs the
//! server far more than sending it costs the client, so the number of submissions being probed is
//! bounded per user (a second parallel upload from the same user waits its turn only up to a small
//! count, then is refused) and for the whole process (a queue with a bounded wait).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::UserId;

/// Most job event streams (SSE) one user may hold open at once.
pub const MAX_STREAMS_PER_USER: usize = 8;

/// Why a submission was not admitted to probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionRefusal {
    /// This user already has the most submissions being probed.
    UserBusy,
    /// The whole process is probing as much as it can; the wait for a slot ran out.
    ServerBusy,
}

/// Counts something per user (uploads being probed, open event streams) up to a maximum.
#[derive(Clone)]
pub struct PerUserSlots {
    taken: Arc<DashMap<UserId, usize>>,
    max: usize,
}

/// One user's slot; given back when dropped.
pub struct UserSlot {
    taken: Arc<DashMap<UserId, usize>>,
    user: UserId,
}

impl PerUserSlots {
    pub fn new(max: usize) -> Self {
        Self {
            taken: Arc::new(DashMap::new()),
            max: max.max(1),
        }
    }

    /// A slot for `user`, or `None` when they hold the maximum already.
    pub fn try_take(&self, user: UserId) -> Option<UserSlot> {
        let mut count = self.taken.entry(user).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            taken: Arc::clone(&self.taken),
            user,
        })
    }

    /// Users holding at least one slot.
    pub fn users(&self) -> usize {
        self.taken.len()
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        // The entry goes at zero, so the map holds only users with slots taken.
        self.taken.remove_if_mut(&self.user, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// Bounds concurrent intake probing globally and per user.
pub struct IntakeGate {
    global: Arc<Semaphore>,
    per_user: PerUserSlots,
    max_wait: Duration,
}

/// Held while a submission is probed; frees its slots when dropped.
pub struct IntakePermit {
    _user: UserSlot,
    _global: OwnedSemaphorePermit,
}

impl IntakeGate {
    /// `global` submissions probed at once in the process, `per_user_max` per user, and at most
    /// `max_wait` queueing for a global slot.
    pub fn new(global: usize, per_user_max: usize, max_wait: Duration) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global.max(1))),
            per_user: PerUserSlots::new(per_user_max),
            max_wait,
        }
    }

    /// Sized for this machine: one probe per core (at least two). Decoding and face detection are
    /// CPU-bound, so more in parallel only adds memory (a 4096 px photo is ~100 MB while decoded).
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores.max(2), 2, Duration::from_secs(20))
    }

    /// Takes a per-user slot at once (or refuses), then waits for a global slot up to `max_wait`.
    pub async fn enter(&self, user: UserId) -> Result<IntakePermit, AdmissionRefusal> {
        let slot = self
            .per_user
            .try_take(user)
            .ok_or(AdmissionRefusal::UserBusy)?;
        let global = tokio::time::timeout(self.max_wait, Arc::clone(&self.global).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(AdmissionRefusal::ServerBusy)?;
        Ok(IntakePermit {
            _user: slot,
            _global: global,
        })
    }

    /// Users with a submission being probed.
    pub fn users_in_flight(&self) -> usize {
        self.per_user.users()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::generate()
    }

    #[tokio::test]
    async fn refuses_a_user_past_their_limit_but_not_others() {
        let gate = IntakeGate::new(8, 2, Duration::from_secs(1));
        let alice = user();
        let first = gate.enter(alice).await.unwrap();
        let _second = gate.enter(alice).await.unwrap();
        assert_eq!(
            gate.enter(alice).await.err(),
            Some(AdmissionRefusal::UserBusy)
        );
        assert!(gate.enter(user()).await.is_ok());
        drop(first);
        assert!(gate.enter(alice).await.is_ok());
    }

    #[tokio::test]
    async fn waits_for_a_global_slot_then_gives_up() {
        let gate = IntakeGate::new(1, 2, Duration::from_millis(50));
        let held = gate.enter(user()).await.unwrap();
        let bob = user();
        assert_eq!(
            gate.enter(bob).await.err(),
            Some(AdmissionRefusal::ServerBusy)
        );
        // The refused attempt gave its per-user slot back.
        assert_eq!(gate.users_in_flight(), 1);
        drop(held);
        assert!(gate.enter(bob).await.is_ok());
        assert_eq!(gate.users_in_flight(), 0);
    }
}
