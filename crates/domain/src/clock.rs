//! The platform's notion of "now", injected so tests can travel in time.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// A source of the current instant. `Clock::system()` in production; `Clock::manual(t)` in tests.
#[derive(Clone, Debug)]
pub struct Clock(Inner);

#[derive(Clone, Debug)]
enum Inner {
    System,
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        Self(Inner::System)
    }

    /// A clock that stands still at `t` until advanced.
    pub fn manual(t: DateTime<Utc>) -> Self {
        Self(Inner::Manual(Arc::new(Mutex::new(t))))
    }

    /// The current instant, truncated to microseconds so it round-trips through both databases.
    pub fn now(&self) -> DateTime<Utc> {
        let t = match &self.0 {
            Inner::System => Utc::now(),
            Inner::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        };
        truncate_micros(t)
    }

    /// Moves a manual clock forward; a system clock ignores it.
    pub fn advance(&self, d: Duration) {
        if let Inner::Manual(t) = &self.0 {
            let mut g = t.lock().unwrap_or_else(|p| p.into_inner());
            *g += d;
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advances() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let c = Clock::manual(t0);
        c.advance(Duration::days(3));
        assert_eq!(c.now(), t0 + Duration::days(3));
    }
}
