//! A circuit breaker per PSP account, in this process.
//!
//! Closed: calls flow and their health is counted over a sliding window. When at least
//! [`BreakerConfig::min_calls`] calls in the window include [`BreakerConfig::failure_ratio`]
//! or more PSP failures (retryable or unknown outcomes — declines are the card's, not the
//! PSP's), the breaker opens: routing leaves the account out. After [`BreakerConfig::open_for`]
//! it is half-open: routing offers the account again and exactly one call goes through as a
//! probe; a healthy answer closes the breaker, a failure opens it again.
//!
//! The state is per process (each worker or server learns on its own); opening and closing are
//! journaled by the caller (`psp.degraded`, `psp.recovered`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Calls older than this do not count.
    pub window: Duration,
    /// Fewer calls than this in the window never open the breaker.
    pub min_calls: usize,
    /// The share of failed calls in the window that opens it.
    pub failure_ratio: f64,
    /// How long it stays open before a probe is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::seconds(60),
            min_calls: 5,
            failure_ratio: 0.5,
            open_for: Duration::seconds(30),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What a recorded call changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerChange {
    /// The breaker opened after `failures` failed calls of `calls`.
    Opened { failures: usize, calls: usize },
    /// A healthy probe closed it.
    Closed,
}

#[derive(Debug, Default)]
struct Breaker {
    /// (when, healthy), oldest first.
    calls: VecDeque<(DateTime<Utc>, bool)>,
    opened_at: Option<DateTime<Utc>>,
    probing: bool,
}

/// The breakers of every PSP account, by account id. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    config: BreakerConfig,
    inner: Arc<Mutex<HashMap<String, Breaker>>>,
}

impl Breakers {
    /// Breakers with their own settings.
    pub fn with_config(config: BreakerConfig) -> Self {
        Self { config, inner: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Breaker>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state_of(&self, b: &Breaker, now: DateTime<Utc>) -> BreakerState {
        match b.opened_at {
            None => BreakerState::Closed,
            Some(at) if now - at >= self.config.open_for => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// The account's breaker state now.
    pub fn state(&self, account: &str, now: DateTime<Utc>) -> BreakerState {
        self.lock().get(account).map_or(BreakerState::Closed, |b| self.state_of(b, now))
    }

    /// Whether routing may offer the account (closed or half-open).
    pub fn routable(&self, account: &str, now: DateTime<Utc>) -> bool {
        self.state(account, now) != BreakerState::Open
    }

    /// Whether a call may go to the account now: always when closed; when half-open, only the
    /// one probe (until its answer is recorded).
    pub fn permit(&self, account: &str, now: DateTime<Utc>) -> bool {
        let mut all = self.lock();
        let Some(b) = all.get_mut(account) else { return true };
        match self.state_of(b, now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if b.probing => false,
            BreakerState::HalfOpen => {
                b.probing = true;
                true
            }
        }
    }

    /// Records a call's health; says whether that opened or closed the breaker.
    pub fn record(&self, account: &str, now: DateTime<Utc>, healthy: bool) -> Option<BreakerChange> {
        let mut all = self.lock();
        let b = all.entry(account.to_owned()).or_default();
        if b.opened_at.is_some() {
            // The probe's answer (or a straggler from before the breaker opened).
            if !b.probing {
                return None;
            }
            b.probing = false;
            if healthy {
                b.opened_at = None;
                b.calls.clear();
                return Some(BreakerChange::Closed);
            }
            b.opened_at = Some(now);
            return None;
        }
        b.calls.push_back((now, healthy));
        while b.calls.front().is_some_and(|(at, _)| now - *at > self.config.window) {
            b.calls.pop_front();
        }
        let calls = b.calls.len();
        let failures = b.calls.iter().filter(|(_, ok)| !ok).count();
        if calls >= self.config.min_calls && failures as f64 >= self.config.failure_ratio * calls as f64 {
            b.opened_at = Some(now);
            b.calls.clear();
            return Some(BreakerChange::Opened { failures, calls });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failures_probes_once_and_closes_on_a_healthy_probe() {
        let b = Breakers::default();
        let t0 = Utc::now();
        for i in 0..4 {
            assert_eq!(b.record("a", t0, i % 2 == 0), None, "fewer than min_calls never open");
        }
        assert_eq!(b.record("a", t0, false), Some(BreakerChange::Opened { failures: 3, calls: 5 }));
        assert_eq!(b.state("a", t0), BreakerState::Open);
        assert!(!b.routable("a", t0) && !b.permit("a", t0));
        assert!(b.routable("other", t0), "breakers are per account");

        let later = t0 + Duration::seconds(31);
        assert_eq!(b.state("a", later), BreakerState::HalfOpen);
        assert!(b.permit("a", later), "one probe");
        assert!(!b.permit("a", later), "only one probe at a time");
        assert_eq!(b.record("a", later, false), None, "a failed probe opens it again");
        assert_eq!(b.state("a", later), BreakerState::Open);

        let again = later + Duration::seconds(31);
        assert!(b.permit("a", again));
        assert_eq!(b.record("a", again, true), Some(BreakerChange::Closed));
        assert_eq!(b.state("a", again), BreakerState::Closed);
    }

    #[test]
    fn old_calls_leave_the_window_and_healthy_traffic_keeps_it_closed() {
        let b = Breakers::default();
        let t0 = Utc::now();
        for _ in 0..4 {
            b.record("a", t0, false);
        }
        // A minute later those failures no longer count.
        let t1 = t0 + Duration::seconds(61);
        for _ in 0..10 {
            assert_eq!(b.record("a", t1, true), None);
        }
        assert_eq!(b.record("a", t1, false), None);
        assert_eq!(b.state("a", t1), BreakerState::Closed);
    }
}
