//! A task's ephemeral storage, as the agent enforces it: when the writable layers are measured
//! again and why a task over its limit stops. Pure; the supervisor measures and stops.

use std::time::Duration;

/// How often, at most, a running task's writable layers are measured against its ephemeral
/// storage: when they are close to the limit.
pub const STORAGE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How fast a task is assumed able to write, at most: a task further from its limit than it
/// could write at this rate in [`STORAGE_CHECK_INTERVAL`] is measured less often (measuring
/// walks the layer, in containerd; every 2 s for every task kept a node of many tasks busy).
const FASTEST_WRITES: u64 = 2 << 30;

/// How long a task may go unmeasured, however far from its limit.
const STORAGE_CHECK_MAX: Duration = Duration::from_secs(30);

/// When to measure a task's writable layers again, now that they hold `used` bytes of `limit`:
/// no later than a task writing [`FASTEST_WRITES`] a second could reach the limit, so what it
/// can write past the limit before it is stopped stays what it writes in 2 s; between 2 and
/// 30 s.
pub fn next_storage_check(used: u64, limit: berth_model::EphemeralStorage) -> Duration {
    let headroom = limit.bytes().saturating_sub(used);
    let secs = headroom / FASTEST_WRITES;
    Duration::from_secs(secs).clamp(STORAGE_CHECK_INTERVAL, STORAGE_CHECK_MAX)
}

/// Why the task must stop when its containers' writable layers hold `used` bytes: `None` while
/// that is within `limit`.
pub fn storage_exceeded(used: u64, limit: berth_model::EphemeralStorage) -> Option<String> {
    if used <= limit.bytes() {
        return None;
    }
    // One decimal, rounded down, so the figure never reads as the limit itself.
    let tenths = used.saturating_mul(10) >> 30;
    Some(format!(
        "ephemeral storage: the task wrote {}.{} GiB, over its {} GiB limit (ephemeralStorage.sizeInGiB)",
        tenths / 10,
        tenths % 10,
        limit.size_in_gib
    ))
}
