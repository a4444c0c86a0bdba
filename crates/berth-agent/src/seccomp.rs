//! The seccomp profile every container gets: an allow-list in the spirit of Docker's default
//! profile, written from the Linux syscall table.
//!
//! The rule: anything not listed fails with `EPERM`. Listed are the syscalls ordinary programs
//! make (files, memory, signals, sockets, time reading, process creation without new
//! namespaces). Left out, whatever the container's capabilities: the kernel keyring
//! (`add_key`, `keyctl`, `request_key`), `userfaultfd`, `io_uring_*`, obsolete and
//! kernel-introspection calls (`_sysctl`, `uselib`, `ustat`, `lookup_dcookie`, `vm86`, …).
//! Allowed only when the container adds the capability the kernel would check anyway (as
//! Docker conditions them), so a capability granted on purpose is not silently useless:
//! namespaces and mounts (`unshare`, `setns`, `mount`, `pivot_root`, the new mount API,
//! `clone` with namespace flags, `clone3`) with SYS_ADMIN; `reboot`, `kexec_*` with SYS_BOOT;
//! kernel modules with SYS_MODULE; clock setting with SYS_TIME; `ptrace` and cross-process
//! memory access with SYS_PTRACE; `chroot` with SYS_CHROOT (in the default set); `acct` with
//! SYS_PACCT; `ioperm`/`iopl` with SYS_RAWIO; `vhangup` with SYS_TTY_CONFIG; NUMA memory
//! policy with SYS_NICE; `bpf` with BPF or SYS_ADMIN; `perf_event_open` with PERFMON or
//! SYS_ADMIN; `syslog` with SYSLOG or SYS_ADMIN; `open_by_handle_at` with DAC_READ_SEARCH;
//! `swapon`/`swapoff`, `quotactl`, `sethostname`, `setdomainname`, `fanotify_init` with
//! SYS_ADMIN.
//!
//! `clone` is allowed only without namespace flags (its flags are a register, which seccomp
//! can read); `clone3` passes its flags in memory, which seccomp cannot read, so without
//! SYS_ADMIN it fails with `ENOSYS` and C libraries fall back to `clone`. `personality` is
//! allowed for the personas programs ask for (Linux, 32-bit, query), not for ones that weaken
//! address-space randomisation.
//!
//! Syscall names that do not exist on an architecture (`open` on aarch64) are skipped by the
//! runtime when it compiles the filter.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// `EPERM`: what a refused syscall returns.
const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` returns without SYS_ADMIN, so C libraries fall back to `clone`.
const ENOSYS: u32 = 38;

/// The namespace flags of `clone`: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// Syscalls every container may make.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    "_llseek", "_newselect", "accept", "accept4", "access", "alarm", "arch_prctl", "bind",
    "brk", "cacheflush", "capget", "capset", "chdir", "chmod", "chown", "chown32",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync",
    "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat",
    "get_robust_list", "get_thread_area", "getcpu", "getcwd", "getdents", "getdents64",
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "ioctl", "ioprio_get",
    "ioprio_set", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listxattr", "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64",
    "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat",
    "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "modify_ldt",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "open", "openat", "openat2", "pause",
    "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "restart_syscall", "riscv_flush_icache", "rmdir",
    "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
    "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_robust_list",
    "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
    "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority",
    "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32",
    "setreuid", "setreuid32", "setrlimit", "setsid", "setsockopt", "setuid", "setuid32",
    "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "socket",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "sync_file_range2", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4",
    "waitid", "waitpid", "write", "writev",
];

/// Syscalls allowed when the container has any of the capabilities named with them.
#[rustfmt::skip]
pub const BY_CAPABILITY: &[(&[Capability], &[&str])] = &[
    (
        &[Capability::SysAdmin],
        &[
            "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "mount",
            "mount_setattr", "move_mount", "open_tree", "pivot_root", "quotactl",
            "quotactl_fd", "setdomainname", "sethostname", "setns", "swapoff", "swapon",
            "umount", "umount2", "unshare",
        ],
    ),
    (&[Capability::SysBoot], &["kexec_file_load", "kexec_load", "reboot"]),
    (&[Capability::SysChroot], &["chroot"]),
    (
        &[Capability::SysModule],
        &["delete_module", "finit_module", "init_module"],
    ),
    (&[Capability::SysPacct], &["acct"]),
    (
        &[Capability::SysPtrace],
        &[
            "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
            "ptrace",
        ],
    ),
    (&[Capability::SysRawio], &["ioperm", "iopl"]),
    (
        &[Capability::SysTime],
        &[
            "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64",
            "settimeofday", "stime",
        ],
    ),
    (&[Capability::SysTtyConfig], &["vhangup"]),
    (
        &[Capability::SysNice],
        &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    ),
    (&[Capability::Bpf, Capability::SysAdmin], &["bpf"]),
    (
        &[Capability::Perfmon, Capability::SysAdmin],
        &["perf_event_open"],
    ),
    (&[Capability::Syslog, Capability::SysAdmin], &["syslog"]),
    (&[Capability::DacReadSearch], &["open_by_handle_at"]),
];

/// `personality` values programs ask for: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|LINUX32,
/// and the query 0xffffffff.
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The architectures the filter covers: the host's and the ones its CPU runs too.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

/// Whether a container with `caps` (its bounding set) may make `syscall`.
pub fn allows(caps: &HashSet<Capability>, syscall: &str) -> bool {
    ALLOWED.contains(&syscall)
        || BY_CAPABILITY
            .iter()
            .any(|(need, names)| names.contains(&syscall) && need.iter().any(|c| caps.contains(c)))
}

fn rule(names: Vec<String>) -> Result<LinuxSyscall, oci_spec::OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
}

/// The profile for a container whose capability set is `caps`.
pub fn profile(caps: &HashSet<Capability>) -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let mut names: Vec<String> = ALLOWED.iter().map(|s| (*s).to_owned()).collect();
    names.extend(
        BY_CAPABILITY
            .iter()
            .filter(|(need, _)| need.iter().any(|c| caps.contains(c)))
            .flat_map(|(_, names)| names.iter().map(|s| (*s).to_owned())),
    );
    names.sort();
    names.dedup();
    let admin = caps.contains(&Capability::SysAdmin);
    let mut syscalls = vec![rule(names)?];
    if admin {
        syscalls.push(rule(vec!["clone".into()])?);
    } else {
        // clone(flags, …) without namespace flags: (flags & mask) == 0.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_owned()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(CLONE_NAMESPACE_FLAGS)
                    .value_two(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?])
                .build()?,
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_owned()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }
    for persona in PERSONAS {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["personality".to_owned()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(persona)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()?])
                .build()?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[Capability]) -> HashSet<Capability> {
        list.iter().copied().collect()
    }

    /// The names a profile allows without conditions on arguments.
    fn allowed(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn what_ordinary_programs_and_tini_need_is_allowed() {
        let p = profile(&caps(&crate::spec::DEFAULT_CAPABILITIES)).expect("a profile");
        let names = allowed(&p);
        for needed in [
            "execve",
            "wait4",
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigtimedwait",
            "openat",
            "statx",
            "newfstatat",
            "getdents64",
            "prctl",
            "setpgid",
            "ioctl",
            "kill",
            "read",
            "write",
            "mmap",
            "futex",
            "socket",
            "chroot",
            "setuid",
            "fchown",
        ] {
            assert!(names.iter().any(|n| n == needed), "{needed} is refused");
        }
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        let json = serde_json::to_value(&p).expect("serialises");
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
        // clone only without namespace flags; clone3 answers ENOSYS.
        let clone = p
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone"])
            .expect("a clone rule");
        let arg = clone.args().as_ref().and_then(|a| a.first()).copied();
        assert_eq!(arg.map(|a| a.value()), Some(CLONE_NAMESPACE_FLAGS));
        assert_eq!(
            arg.map(|a| a.op()),
            Some(LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        let clone3 = p
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone3"])
            .expect("a clone3 rule");
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));
    }

    #[test]
    fn dangerous_syscalls_need_their_capability() {
        let default = caps(&crate::spec::DEFAULT_CAPABILITIES);
        let names = allowed(&profile(&default).expect("a profile"));
        for refused in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "init_module",
            "add_key",
            "keyctl",
            "request_key",
            "bpf",
            "perf_event_open",
            "ptrace",
            "clock_settime",
            "settimeofday",
            "reboot",
            "swapon",
            "kexec_load",
            "userfaultfd",
            "io_uring_setup",
            "acct",
            "syslog",
            "open_by_handle_at",
            "clone3",
            "personality",
        ] {
            assert!(!names.iter().any(|n| n == refused), "{refused} is allowed");
            assert!(!allows(&default, refused), "{refused} is allowed");
        }
        let mut more = default.clone();
        more.extend([
            Capability::SysAdmin,
            Capability::SysTime,
            Capability::SysPtrace,
        ]);
        let names = allowed(&profile(&more).expect("a profile"));
        for now in [
            "unshare",
            "mount",
            "clone",
            "clone3",
            "clock_settime",
            "ptrace",
            "bpf",
        ] {
            assert!(names.iter().any(|n| n == now), "{now} is still refused");
        }
        // The keyring stays closed whatever the capabilities.
        assert!(!names.iter().any(|n| n == "keyctl"));
        // Dropping SYS_CHROOT takes chroot away.
        let mut fewer = default;
        fewer.remove(&Capability::SysChroot);
        assert!(!allows(&fewer, "chroot"));
    }
}
