//! The clock that stamps commands. While this server leads: the wall clock read when it began
//! to lead, advanced by the monotonic clock since. A step of the wall clock while a server
//! leads (an operator setting it, NTP stepping it, a VM resumed) then moves none of the
//! timestamps it writes, so deadlines counted in them (a deployment's healthy and progress
//! deadlines, cooldowns, retention) neither fire early nor stall; the step is taken up when
//! leadership next moves, where deadlines restart anyway (`leading_since`). Slow corrections
//! (NTP slewing) reach the monotonic clock as they reach the wall clock. A server that does
//! not lead reads the wall clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `(wall clock in ms since the epoch, the monotonic instant it was read at)`, taken when
/// this server last began to lead.
static ANCHOR: Mutex<Option<(u64, Instant)>> = Mutex::new(None);
static LEADING: AtomicBool = AtomicBool::new(false);

/// The wall clock, in ms since the epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn anchor() -> Option<(u64, Instant)> {
    *ANCHOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the epoch, by this server's clock (see the module's documentation).
pub fn now_ms() -> u64 {
    match anchor() {
        Some((wall, at)) if LEADING.load(Ordering::Acquire) => {
            wall.saturating_add(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
        }
        _ => wall_ms(),
    }
}

/// When this server last began to lead, by its clock: deadlines that began before count from
/// then (as node TTLs do), since another leader's clock may differ.
pub fn leading_since() -> u64 {
    anchor().map_or_else(wall_ms, |(wall, _)| wall)
}

/// This server began or stopped leading; called before anyone is told.
pub(crate) fn set_leading(leading: bool) {
    if leading {
        *ANCHOR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((wall_ms(), Instant::now()));
    }
    LEADING.store(leading, Ordering::Release);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_follows_the_wall_clock_at_its_anchor_and_never_goes_back() {
        super::set_leading(true);
        let wall = super::wall_ms();
        let a = super::now_ms();
        let b = super::now_ms();
        assert!(a.abs_diff(wall) < 1000, "{a} vs {wall}");
        assert!(b >= a);
        assert!(super::leading_since() <= a);
    }
}
