//! What a container may do inside its sandbox, with ECS's names: `user`,
//! `readonlyRootFilesystem`, `linuxParameters.capabilities`, `ulimits`, and the task's
//! `ephemeralStorage`. The defaults are Docker's (its capability set, seccomp profile, masked
//! paths); these fields only tighten or loosen them per container.

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Ephemeral storage a task gets when its definition names none (Fargate's default), in GiB.
pub const DEFAULT_EPHEMERAL_STORAGE_GIB: u32 = 20;
/// The largest ephemeral storage a task may ask for (Fargate's), in GiB.
pub const MAX_EPHEMERAL_STORAGE_GIB: u32 = 200;

/// Capabilities a container may add, as ECS and Docker name them (without `CAP_`).
pub const CAPABILITIES: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// Resource limits a container may set, as ECS names them.
pub const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Linux-specific settings of a container (ECS `linuxParameters`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinuxParameters {
    /// Changes to the default capability set.
    #[serde(default, skip_serializing_if = "KernelCapabilities::is_empty")]
    pub capabilities: KernelCapabilities,
}

impl LinuxParameters {
    pub fn is_empty(&self) -> bool {
        self.capabilities.is_empty()
    }
}

/// Capabilities added to and dropped from Docker's default set (`ALL` drops every one).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelCapabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

impl KernelCapabilities {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.drop.is_empty()
    }

    /// A capability name as Docker spells it: upper case, without the `CAP_` prefix.
    pub fn normalize(name: &str) -> String {
        let upper = name.trim().to_ascii_uppercase();
        upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
    }

    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        for (list, names, all_allowed) in [("add", &self.add, false), ("drop", &self.drop, true)] {
            for (i, name) in names.iter().enumerate() {
                let cap = Self::normalize(name);
                if cap == "ALL" && all_allowed {
                    continue;
                }
                if !CAPABILITIES.contains(&cap.as_str()) {
                    return Err(ValidationError::new(
                        format!("{field}.{list}[{i}]"),
                        format!("{name:?} is not a Linux capability (write it like NET_ADMIN)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One resource limit of a container's processes (ECS `ulimits`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ulimit {
    /// `nofile`, `nproc`, `core`, … (the names of `ulimit`, without `RLIMIT_`).
    pub name: String,
    pub soft_limit: u64,
    pub hard_limit: u64,
}

/// The task's writable storage: the sum of its containers' writable layers (ECS
/// `ephemeralStorage`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EphemeralStorage {
    /// 1 to 200 GiB; 20 when the definition names none.
    #[serde(rename = "sizeInGiB")]
    pub size_in_gib: u32,
}

impl EphemeralStorage {
    pub fn bytes(self) -> u64 {
        u64::from(self.size_in_gib) << 30
    }
}

impl Default for EphemeralStorage {
    fn default() -> Self {
        Self {
            size_in_gib: DEFAULT_EPHEMERAL_STORAGE_GIB,
        }
    }
}

/// Checks a container's `user` (`uid`, `uid:gid`, `name` or `name:group`).
pub(crate) fn validate_user(field: &str, user: &str) -> Result<(), ValidationError> {
    let (u, g) = user.split_once(':').unwrap_or((user, "x"));
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !ok(u) || !ok(g) {
        return Err(ValidationError::new(
            field,
            format!("{user:?} is not a user; write uid, uid:gid, name or name:group"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_ulimits(field: &str, ulimits: &[Ulimit]) -> Result<(), ValidationError> {
    let mut seen = std::collections::HashSet::new();
    for (i, u) in ulimits.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if !ULIMIT_NAMES.contains(&u.name.as_str()) {
            return Err(ValidationError::new(
                format!("{field}.name"),
                format!(
                    "{:?} is not a ulimit; use one of {}",
                    u.name,
                    ULIMIT_NAMES.join(", ")
                ),
            ));
        }
        if !seen.insert(u.name.as_str()) {
            return Err(ValidationError::new(
                format!("{field}.name"),
                format!("{:?} is set twice", u.name),
            ));
        }
        if u.soft_limit > u.hard_limit {
            return Err(ValidationError::new(
                format!("{field}.softLimit"),
                format!("{} is above the hard limit {}", u.soft_limit, u.hard_limit),
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_linux_parameters(
    field: &str,
    p: &LinuxParameters,
) -> Result<(), ValidationError> {
    p.capabilities.validate(&format!("{field}.capabilities"))
}

pub(crate) fn validate_ephemeral_storage(s: EphemeralStorage) -> Result<(), ValidationError> {
    if s.size_in_gib == 0 || s.size_in_gib > MAX_EPHEMERAL_STORAGE_GIB {
        return Err(ValidationError::new(
            "ephemeralStorage.sizeInGiB",
            format!(
                "{} GiB is out of range; use 1..={MAX_EPHEMERAL_STORAGE_GIB}",
                s.size_in_gib
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_capabilities_and_ulimits_are_checked() {
        for good in ["1000", "1000:1000", "nobody", "www-data:www-data"] {
            assert!(validate_user("user", good).is_ok(), "{good}");
        }
        assert_eq!(
            validate_user("user", "a b").unwrap_err().to_string(),
            "user: \"a b\" is not a user; write uid, uid:gid, name or name:group"
        );
        let caps = |add: &[&str], drop: &[&str]| KernelCapabilities {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        };
        assert!(caps(&["NET_ADMIN", "cap_sys_time"], &["ALL"])
            .validate("c")
            .is_ok());
        assert_eq!(
            caps(&["ALL"], &[]).validate("c").unwrap_err().to_string(),
            "c.add[0]: \"ALL\" is not a Linux capability (write it like NET_ADMIN)"
        );
        let u = |name: &str, soft, hard| Ulimit {
            name: name.into(),
            soft_limit: soft,
            hard_limit: hard,
        };
        assert!(validate_ulimits("ulimits", &[u("nofile", 1024, 4096)]).is_ok());
        assert_eq!(
            validate_ulimits("ulimits", &[u("nofile", 10, 5)])
                .unwrap_err()
                .to_string(),
            "ulimits[0].softLimit: 10 is above the hard limit 5"
        );
        assert!(validate_ulimits("ulimits", &[u("files", 1, 1)]).is_err());
        assert!(validate_ephemeral_storage(EphemeralStorage { size_in_gib: 0 }).is_err());
        assert!(validate_ephemeral_storage(EphemeralStorage::default()).is_ok());
    }
}
