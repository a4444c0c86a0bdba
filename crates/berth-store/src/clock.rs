//! The clock that stamps commands: the wall clock read when this server last became the
//! leader (or started), advanced by the monotonic clock since. A step of the wall clock while
//! a server leads (an operator setting it, NTP stepping it, a VM resumed) moves none of the
//! timestamps it writes, so deadlines counted in them (a deployment's healthy and progress
//! deadlines, cooldowns, retention) neither fire early nor stall; the step is taken up when
//! leadership next moves, where deadlines restart anyway. Slow corrections (NTP slewing) reach
//! the monotonic clock as they reach the wall clock.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `(wall clock in ms since the epoch, the monotonic instant it was read at)`.
static ANCHOR: Mutex<Option<(u64, Instant)>> = Mutex::new(None);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch, by this server's clock (see the module's documentation).
pub fn now_ms() -> u64 {
    let mut anchor = ANCHOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (wall, at) = *anchor.get_or_insert_with(|| (wall_ms(), Instant::now()));
    wall.saturating_add(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// Reads the wall clock again: this server became the leader.
pub(crate) fn reanchor() {
    let mut anchor = ANCHOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *anchor = Some((wall_ms(), Instant::now()));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_follows_the_wall_clock_at_its_anchor_and_never_goes_back() {
        super::reanchor();
        let wall = super::wall_ms();
        let a = super::now_ms();
        let b = super::now_ms();
        assert!(a.abs_diff(wall) < 1000, "{a} vs {wall}");
        assert!(b >= a);
    }
}
