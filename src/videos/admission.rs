//! Admission to intake: probing an upload (image decode, full audio decode, face detection) costs the
//! server far more than sending it costs the client, so the number of submissions being probed is
//! bounded per user (a user may have a small count probed at once; past it they are refused) and for
//! the whole process (one slot per core, a bounded wait for one). The process's slots are shared
//! between tenants: one may hold all but one of them, and when they are all taken the next one freed
//! goes to the waiting tenant that holds the fewest, so one tenant sending photos that are slow to probe
//! cannot make every other tenant's submission wait behind its own until the wait runs out.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::domain::{TenantId, UserId};

/// Most job event streams (SSE) one user may hold open at once.
pub const MAX_STREAMS_PER_USER: usize = 8;

/// Most uploads (submissions, previews) whose body one user may be sending at once: each may hold
/// up to the image and audio limits of scratch disk until it is complete.
pub const MAX_UPLOADS_RECEIVING_PER_USER: usize = 4;

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

/// Bounds concurrent intake probing per user and for the whole process, and shares the process's
/// slots fairly between tenants.
pub struct IntakeGate {
    slots: Arc<FairSlots>,
    per_user: PerUserSlots,
    max_wait: Duration,
}

/// Held while a submission is probed; frees its slots when dropped.
pub struct IntakePermit {
    _slot: TenantSlot,
    _user: UserSlot,
}

impl IntakeGate {
    /// `global` submissions probed at once in the process, `per_user_max` per user, and at most
    /// `max_wait` queueing for a slot.
    pub fn new(global: usize, per_user_max: usize, max_wait: Duration) -> Self {
        Self {
            slots: Arc::new(FairSlots::new(global.max(1))),
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

    /// Takes a per-user slot at once (or refuses), then waits up to `max_wait` for a slot of the
    /// process.
    pub async fn enter(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<IntakePermit, AdmissionRefusal> {
        let user_slot = self
            .per_user
            .try_take(user)
            .ok_or(AdmissionRefusal::UserBusy)?;
        let slot = FairSlots::take(&self.slots, tenant, self.max_wait)
            .await
            .ok_or(AdmissionRefusal::ServerBusy)?;
        Ok(IntakePermit {
            _slot: slot,
            _user: user_slot,
        })
    }

    /// Users with a submission being probed.
    pub fn users_in_flight(&self) -> usize {
        self.per_user.users()
    }

    /// Tenants with a submission being probed.
    pub fn tenants_in_flight(&self) -> usize {
        self.slots.state().held.len()
    }
}

/// A fixed number of slots shared by tenants, fairly: a tenant may hold all but one of them, and when
/// none is free, the next one given back goes to the waiting tenant that holds the fewest (ties: the
/// longest waiting). So one tenant sending photos that are slow to probe (a 4096 px photo without a
/// face costs seconds of CPU, tens of seconds two at a time on two cores) never holds every slot: another
/// tenant's submission starts at once, instead of waiting behind it until its wait runs out.
struct FairSlots {
    state: std::sync::Mutex<SlotState>,
    /// The most one tenant may hold: all but one slot (one on a one-slot process), so another tenant's
    /// submission always finds a slot within the time of a normal probe, whatever one tenant sends.
    tenant_max: usize,
}

#[derive(Default)]
struct SlotState {
    free: usize,
    /// Slots held per tenant (only tenants holding some).
    held: std::collections::HashMap<TenantId, usize>,
    waiting: Vec<Waiter>,
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    tenant: TenantId,
    granted: tokio::sync::oneshot::Sender<()>,
}

/// A tenant's slot; given back (to the fairest waiter) when dropped.
struct TenantSlot {
    slots: Arc<FairSlots>,
    tenant: TenantId,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.slots.give_back(self.tenant);
    }
}

/// A place in the queue, with the receiving end of its grant. Dropped while waiting (the wait ran out,
/// or the request went away), it leaves the queue, or gives back the slot granted meanwhile: under the
/// lock, a waiter no longer in the queue was granted one.
struct QueuePlace {
    slots: Arc<FairSlots>,
    ticket: u64,
    tenant: TenantId,
    granted: tokio::sync::oneshot::Receiver<()>,
    /// Set once the granted slot is handed to a `TenantSlot`.
    granted_slot_taken: bool,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if self.granted_slot_taken {
            return;
        }
        let mut state = self.slots.state();
        if let Some(at) = state.waiting.iter().position(|w| w.ticket == self.ticket) {
            state.waiting.remove(at);
        } else {
            drop(state);
            self.slots.give_back(self.tenant);
        }
    }
}

impl FairSlots {
    fn new(slots: usize) -> Self {
        Self {
            state: std::sync::Mutex::new(SlotState {
                free: slots,
                ..SlotState::default()
            }),
            tenant_max: slots.saturating_sub(1).max(1),
        }
    }

    /// Whether `tenant` may take one more slot.
    fn may_take(&self, state: &SlotState, tenant: TenantId) -> bool {
        state.held.get(&tenant).copied().unwrap_or(0) < self.tenant_max
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Nothing under the lock can panic half-way through a change; recover the data regardless.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `tenant`, waiting at most `max_wait`; `None` when the wait ran out.
    async fn take(this: &Arc<Self>, tenant: TenantId, max_wait: Duration) -> Option<TenantSlot> {
        let slot = || TenantSlot {
            slots: Arc::clone(this),
            tenant,
        };
        let mut place = {
            let mut state = this.state();
            let queue_first = state
                .waiting
                .iter()
                .any(|w| this.may_take(&state, w.tenant));
            if state.free > 0 && !queue_first && this.may_take(&state, tenant) {
                state.free -= 1;
                *state.held.entry(tenant).or_default() += 1;
                return Some(slot());
            }
            let (sender, granted) = tokio::sync::oneshot::channel();
            state.next_ticket += 1;
            let ticket = state.next_ticket;
            state.waiting.push(Waiter {
                ticket,
                tenant,
                granted: sender,
            });
            QueuePlace {
                slots: Arc::clone(this),
                ticket,
                tenant,
                granted,
                granted_slot_taken: false,
            }
        };
        let granted = tokio::time::timeout(max_wait, &mut place.granted).await;
        if matches!(granted, Ok(Ok(()))) {
            // The slot is now the `TenantSlot`'s to give back, not the place's.
            place.granted_slot_taken = true;
            Some(slot())
        } else {
            None
        }
    }

    /// `tenant` gives a slot back: to the waiting tenant holding the fewest, else to the free pool.
    fn give_back(&self, tenant: TenantId) {
        let mut state = self.state();
        if let Some(count) = state.held.get_mut(&tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.held.remove(&tenant);
            }
        }
        loop {
            let next = state
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| self.may_take(&state, w.tenant))
                .min_by_key(|(_, w)| (state.held.get(&w.tenant).copied().unwrap_or(0), w.ticket))
                .map(|(at, _)| at);
            let Some(at) = next else {
                state.free += 1;
                return;
            };
            let waiter = state.waiting.remove(at);
            *state.held.entry(waiter.tenant).or_default() += 1;
            if waiter.granted.send(()).is_ok() {
                return;
            }
            // The waiter went away without leaving the queue (cannot happen while its place is
            // armed, but never lose a slot): undo and try the next.
            if let Some(count) = state.held.get_mut(&waiter.tenant) {
                *count -= 1;
                if *count == 0 {
                    state.held.remove(&waiter.tenant);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::generate()
    }

    fn tenant() -> TenantId {
        TenantId::generate()
    }

    #[tokio::test]
    async fn refuses_a_user_past_their_limit_but_not_others() {
        let gate = IntakeGate::new(8, 2, Duration::from_secs(1));
        let (acme, alice) = (tenant(), user());
        let first = gate.enter(acme, alice).await.unwrap();
        let _second = gate.enter(acme, alice).await.unwrap();
        assert_eq!(
            gate.enter(acme, alice).await.err(),
            Some(AdmissionRefusal::UserBusy)
        );
        assert!(gate.enter(acme, user()).await.is_ok());
        drop(first);
        assert!(gate.enter(acme, alice).await.is_ok());
    }

    #[tokio::test]
    async fn waits_for_a_global_slot_then_gives_up() {
        let gate = IntakeGate::new(2, 2, Duration::from_millis(50));
        let held = [
            gate.enter(tenant(), user()).await.unwrap(),
            gate.enter(tenant(), user()).await.unwrap(),
        ];
        let (globex, bob) = (tenant(), user());
        assert_eq!(
            gate.enter(globex, bob).await.err(),
            Some(AdmissionRefusal::ServerBusy)
        );
        // The refused attempt gave its per-user and tenant slots back.
        assert_eq!(gate.users_in_flight(), 2);
        assert_eq!(gate.tenants_in_flight(), 2);
        drop(held);
        assert!(gate.enter(globex, bob).await.is_ok());
        assert_eq!(gate.users_in_flight(), 0);
        assert_eq!(gate.tenants_in_flight(), 0);
    }

    /// Lets spawned tasks run until `n` of them wait for a slot.
    async fn until_waiting(gate: &IntakeGate, n: usize) {
        while gate.slots.state().waiting.len() != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_busy_tenant_leaves_a_slot_for_others_and_they_are_served_first() {
        let gate = Arc::new(IntakeGate::new(3, 2, Duration::from_secs(30)));
        let (noisy, quiet) = (tenant(), tenant());
        let (mallory, trudy) = (user(), user());
        // One tenant may hold all but one slot.
        let mut held = vec![
            gate.enter(noisy, mallory).await.unwrap(),
            gate.enter(noisy, trudy).await.unwrap(),
        ];
        let enter = |tenant, who| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.enter(tenant, who).await })
        };
        let noisy_next = enter(noisy, mallory);
        until_waiting(&gate, 1).await;
        assert_eq!(gate.slots.state().free, 1);
        // Another tenant takes the slot left free at once, and then queues behind nobody.
        let quiet_first = gate.enter(quiet, user()).await.unwrap();
        let quiet_second = enter(quiet, user());
        until_waiting(&gate, 2).await;
        // A slot given back goes to a tenant below its share, though the busy one asked earlier.
        drop(quiet_first);
        let quiet_second = quiet_second.await.unwrap().unwrap();
        assert!(!noisy_next.is_finished());
        drop(held.pop());
        let noisy_next = noisy_next.await.unwrap().unwrap();
        assert_eq!(gate.tenants_in_flight(), 2);
        drop((quiet_second, noisy_next, held));
        assert_eq!(gate.tenants_in_flight(), 0);
        assert_eq!(gate.slots.state().free, 3);
    }

    #[tokio::test]
    async fn a_request_that_goes_away_while_waiting_loses_no_slot() {
        let gate = Arc::new(IntakeGate::new(1, 2, Duration::from_secs(30)));
        let held = gate.enter(tenant(), user()).await.unwrap();
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.enter(tenant(), user()).await.map(|_| ()) })
        };
        until_waiting(&gate, 1).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(gate.slots.state().waiting.len(), 0);
        drop(held);
        assert_eq!(gate.slots.state().free, 1);
        assert!(gate.enter(tenant(), user()).await.is_ok());
    }

    #[tokio::test]
    async fn a_single_slot_machine_still_admits_every_tenant() {
        let gate = IntakeGate::new(1, 2, Duration::from_millis(50));
        let held = gate.enter(tenant(), user()).await.unwrap();
        assert_eq!(
            gate.enter(tenant(), user()).await.err(),
            Some(AdmissionRefusal::ServerBusy)
        );
        drop(held);
        assert!(gate.enter(tenant(), user()).await.is_ok());
    }
}
