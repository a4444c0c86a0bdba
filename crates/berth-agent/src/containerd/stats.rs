//! A container's counters from the cgroup it runs in — the numbers containerd's `Tasks.Metrics`
//! reports, read where they live (cgroup v1 controllers, or the v2 unified hierarchy) — and
//! whether the OOM killer fired in it. The parsers are pure functions over the files' contents
//! (tested on the files under `fixtures/`); the readers only find the files.

use std::path::Path;

use crate::runtime::ContainerStats;

/// Where cgroup hierarchies are mounted.
pub(super) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The counters of the cgroup at `path` (relative to the cgroup root).
pub(super) fn cgroup_stats(path: &str) -> std::io::Result<ContainerStats> {
    read_stats(Path::new(CGROUP_ROOT), path)
}

/// Whether the OOM killer fired in the cgroup at `path` (under the cgroup v1 memory hierarchy,
/// or the v2 unified one); false when neither can be read.
pub(super) fn oom_killed(path: &str) -> bool {
    read_oom_killed(Path::new(CGROUP_ROOT), path)
}

fn read_stats(root: &Path, path: &str) -> std::io::Result<ContainerStats> {
    let read = |p: &str| std::fs::read_to_string(root.join(p));
    if let Ok(cpu) = read(&format!("cpuacct/{path}/cpuacct.usage")) {
        let usage = read(&format!("memory/{path}/memory.usage_in_bytes"))?;
        let stat = read(&format!("memory/{path}/memory.stat")).unwrap_or_default();
        return Ok(v1_stats(&cpu, &usage, &stat));
    }
    let cpu = read(&format!("{path}/cpu.stat"))?;
    let current = read(&format!("{path}/memory.current"))?;
    let stat = read(&format!("{path}/memory.stat")).unwrap_or_default();
    Ok(v2_stats(&cpu, &current, &stat))
}

fn read_oom_killed(root: &Path, path: &str) -> bool {
    let path = path.trim_start_matches('/');
    let v1 = std::fs::read_to_string(root.join(format!("memory/{path}/memory.oom_control")));
    let v2 = || std::fs::read_to_string(root.join(format!("{path}/memory.events")));
    oom_kills(&v1.or_else(|_| v2()).unwrap_or_default())
}

/// cgroup v1: `cpuacct.usage` (ns), `memory.usage_in_bytes`, `memory.stat`. Working set is usage
/// minus the inactive file cache, as containerd and the kubelet count it.
pub(super) fn v1_stats(
    cpuacct_usage: &str,
    memory_usage: &str,
    memory_stat: &str,
) -> ContainerStats {
    let usage = number(memory_usage);
    ContainerStats {
        cpu_ns: number(cpuacct_usage),
        memory_bytes: usage.saturating_sub(stat_value(memory_stat, "total_inactive_file")),
    }
}

/// cgroup v2: `cpu.stat` (`usage_usec`), `memory.current`, `memory.stat`.
pub(super) fn v2_stats(cpu_stat: &str, memory_current: &str, memory_stat: &str) -> ContainerStats {
    let usage = number(memory_current);
    ContainerStats {
        cpu_ns: stat_value(cpu_stat, "usage_usec") * 1000,
        memory_bytes: usage.saturating_sub(stat_value(memory_stat, "inactive_file")),
    }
}

/// Whether `memory.oom_control` (v1) or `memory.events` (v2) counts an OOM kill.
pub(super) fn oom_kills(text: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// A file holding one number; 0 when it holds none.
fn number(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// The value of `key` in a flat-keyed file (`key value` lines); 0 when absent.
fn stat_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MEMORY_STAT: &str = include_str!("fixtures/v1-memory.stat");
    const V1_OOM_CONTROL: &str = include_str!("fixtures/v1-memory.oom_control");
    const V2_CPU_STAT: &str = include_str!("fixtures/v2-cpu.stat");
    const V2_MEMORY_STAT: &str = include_str!("fixtures/v2-memory.stat");
    const V2_MEMORY_EVENTS: &str = include_str!("fixtures/v2-memory.events");
    const V2_MEMORY_EVENTS_QUIET: &str = include_str!("fixtures/v2-memory.events.quiet");

    #[track_caller]
    fn check(actual: ContainerStats, cpu_ns: u64, memory_bytes: u64) {
        assert_eq!(
            actual,
            ContainerStats {
                cpu_ns,
                memory_bytes
            }
        );
    }

    #[test]
    fn v1_working_set_is_usage_minus_inactive_file() {
        // 5402624 in use, 1216512 of it inactive file cache.
        check(
            v1_stats("1523044000\n", "5402624\n", V1_MEMORY_STAT),
            1_523_044_000,
            4_186_112,
        );
        // Without memory.stat (or with garbage), usage counts whole.
        check(v1_stats("12\n", "4096\n", ""), 12, 4096);
        check(v1_stats("x", "", "total_inactive_file 9"), 0, 0);
    }

    #[test]
    fn v2_cpu_is_in_microseconds() {
        check(
            v2_stats(V2_CPU_STAT, "5402624\n", V2_MEMORY_STAT),
            1_523_044_000,
            4_186_112,
        );
        check(v2_stats("", "100\n", ""), 0, 100);
    }

    #[test]
    fn keys_match_whole() {
        // `inactive_file` is not read from `total_inactive_file`, nor `usage_usec` from a longer key.
        assert_eq!(stat_value("total_inactive_file 5\n", "inactive_file"), 0);
        assert_eq!(
            stat_value("usage_usec_x 5\nusage_usec 7\n", "usage_usec"),
            7
        );
    }

    #[test]
    fn oom_kills_are_counted_in_v1_and_v2() {
        assert!(oom_kills(V1_OOM_CONTROL));
        assert!(oom_kills(V2_MEMORY_EVENTS));
        assert!(!oom_kills(V2_MEMORY_EVENTS_QUIET));
        assert!(!oom_kills("oom_kill_disable 1\nunder_oom 0\n"));
        assert!(!oom_kills(""));
    }

    #[test]
    fn readers_find_v1_controllers_or_the_v2_hierarchy() {
        let write = |root: &Path, file: &str, text: &str| {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(path, text).expect("write fixture");
        };
        let v1 = tempfile::tempdir().expect("tempdir");
        write(v1.path(), "cpuacct/berth/c1/cpuacct.usage", "42\n");
        write(
            v1.path(),
            "memory/berth/c1/memory.usage_in_bytes",
            "5402624\n",
        );
        write(v1.path(), "memory/berth/c1/memory.stat", V1_MEMORY_STAT);
        write(
            v1.path(),
            "memory/berth/c1/memory.oom_control",
            V1_OOM_CONTROL,
        );
        check(
            read_stats(v1.path(), "berth/c1").expect("v1 stats"),
            42,
            4_186_112,
        );
        assert!(read_oom_killed(v1.path(), "/berth/c1"));

        let v2 = tempfile::tempdir().expect("tempdir");
        write(v2.path(), "berth/c1/cpu.stat", V2_CPU_STAT);
        write(v2.path(), "berth/c1/memory.current", "5402624\n");
        write(v2.path(), "berth/c1/memory.events", V2_MEMORY_EVENTS_QUIET);
        check(
            read_stats(v2.path(), "berth/c1").expect("v2 stats"),
            1_523_044_000,
            5_402_624,
        );
        assert!(!read_oom_killed(v2.path(), "/berth/c1"));
        assert!(read_stats(v2.path(), "berth/gone").is_err());
    }
}
