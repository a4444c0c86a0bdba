//! Builds the OCI runtime spec for a container and derives its process from the image and the
//! container definition, as Docker and containerd do. Pure: tested without containerd.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capability,
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResources, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use berth_model::{ContainerDefinition, ContainerSecrets, KernelCapabilities, Ulimit};

use crate::runtime::{ContainerSpec, ImageInfo, RuntimeError};

/// Where a container's init is mounted (read-only), as Docker mounts its own at
/// `/sbin/docker-init`.
pub const INIT_MOUNT: &str = "/sbin/berth-init";

/// The search path of a process whose image sets none (Docker's and containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Each container's pids limit unless the agent is told otherwise (`--pids-limit`).
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// Paths hidden from containers besides oci-spec's defaults (Docker's list).
const MORE_MASKED_PATHS: [&str; 1] = ["/sys/devices/virtual/powercap"];

/// What the node decides about every container's spec, whatever its definition says.
#[derive(Debug, Clone, Copy)]
pub struct SpecOptions<'a> {
    /// Parent of every container's cgroup.
    pub cgroup_parent: &'a str,
    /// The init binary on the host (mounted read-only at [`INIT_MOUNT`]).
    pub init: &'a Path,
    /// The most processes (and threads) a container may have; `None`: no limit.
    pub pids_limit: Option<i64>,
}

/// CFS period used for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// containerd's default capability set for non-privileged containers.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The process a container runs: Docker's rules for combining the image's ENTRYPOINT/CMD with
/// the definition's `entryPoint`/`command`. Overriding the entrypoint drops the image's CMD.
pub fn process_args(image: &ImageInfo, def: &ContainerDefinition) -> Vec<String> {
    let (entrypoint, cmd) = if def.entry_point.is_empty() {
        let cmd = if def.command.is_empty() {
            &image.cmd
        } else {
            &def.command
        };
        (&image.entrypoint, cmd)
    } else {
        (&def.entry_point, &def.command)
    };
    entrypoint.iter().chain(cmd.iter()).cloned().collect()
}

/// The image's environment with the definition's variables added or replacing same-named ones,
/// then the container's secret variables (which replace the image's too).
pub fn process_env(
    image: &ImageInfo,
    def: &ContainerDefinition,
    secrets: Option<&ContainerSecrets>,
) -> Vec<String> {
    let secret_env = secrets.map(|s| &s.environment);
    let set_here = |key: &str| {
        def.environment.contains_key(key) || secret_env.is_some_and(|e| e.contains_key(key))
    };
    let mut env: Vec<String> = image
        .env
        .iter()
        .filter(|kv| !set_here(kv.split_once('=').map_or(kv.as_str(), |(k, _)| k)))
        .cloned()
        .collect();
    if !env.iter().any(|kv| kv.starts_with("PATH=")) && !set_here("PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env.extend(def.environment.iter().map(|(k, v)| format!("{k}={v}")));
    env.extend(
        secret_env
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}")),
    );
    env
}

/// The user the container runs as, before resolution: the definition's `user`, else the
/// image's USER; empty for root.
pub fn process_user<'a>(image: &'a ImageInfo, def: &'a ContainerDefinition) -> &'a str {
    def.user
        .as_deref()
        .or(image.user.as_deref())
        .unwrap_or("")
        .trim()
}

/// The container's capability set: the default one (or none with `drop: [ALL]`), plus `add`,
/// minus `drop`.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<HashSet<Capability>, RuntimeError> {
    let parse = |name: &String| {
        let cap = KernelCapabilities::normalize(name);
        serde_json::from_value::<Capability>(serde_json::Value::String(format!("CAP_{cap}")))
            .map_err(|_| RuntimeError::UnknownCapability(name.clone()))
    };
    let is_all = |name: &String| KernelCapabilities::normalize(name) == "ALL";
    let mut caps: HashSet<Capability> = if drop.iter().any(is_all) {
        HashSet::new()
    } else {
        DEFAULT_CAPABILITIES.into_iter().collect()
    };
    for name in add {
        caps.insert(parse(name)?);
    }
    for name in drop.iter().filter(|n| !is_all(n)) {
        caps.remove(&parse(name)?);
    }
    Ok(caps)
}

/// The kernel's resource limit for an ECS ulimit name.
fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    Some(match name {
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        _ => return None,
    })
}

/// The process's rlimits: 1024 open files unless the definition says otherwise, then each of
/// its ulimits (names the model did not accept are skipped).
pub fn rlimits(ulimits: &[Ulimit]) -> Result<Vec<PosixRlimit>, RuntimeError> {
    let mut limits = vec![(PosixRlimitType::RlimitNofile, 1024, 1024)];
    for u in ulimits {
        let Some(typ) = rlimit_type(&u.name) else {
            continue;
        };
        limits.retain(|(t, _, _)| *t != typ);
        limits.push((typ, u.soft_limit, u.hard_limit));
    }
    limits
        .into_iter()
        .map(|(typ, soft, hard)| {
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
                .map_err(RuntimeError::Spec)
        })
        .collect()
}

/// Docker's default mounts, with `/proc` mounted nosuid, noexec and nodev.
fn default_mounts() -> Vec<Mount> {
    let mut mounts = get_default_mounts();
    for m in &mut mounts {
        if m.destination() == Path::new("/proc") {
            m.set_options(Some(
                ["nosuid", "noexec", "nodev"].map(String::from).to_vec(),
            ));
        }
    }
    mounts
}

fn bind(source: &Path, destination: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(RuntimeError::Spec)
}

/// The CFS quota for `cpu_units` (1024 units = one full CPU per period).
pub fn cpu_quota(cpu_units: u32) -> i64 {
    let quota = u64::from(cpu_units) * CPU_PERIOD_US / u64::from(berth_model::CPU_UNITS_PER_VCPU);
    // The kernel rejects quotas below 1 ms.
    i64::try_from(quota.max(1000)).unwrap_or(i64::MAX)
}

/// The OCI runtime spec for `c`: its cgroup under `opts.cgroup_parent`; with `c.init`, its
/// process runs under `opts.init` (a static binary on the host, mounted read-only):
/// `init -- ARGS`. Every container gets the default seccomp profile ([`crate::seccomp`]), the
/// node's pids limit, masked and read-only kernel paths, and `no_new_privs`.
pub fn build_spec(c: &ContainerSpec, opts: &SpecOptions<'_>) -> Result<Spec, RuntimeError> {
    let err = RuntimeError::Spec;
    let mut mounts = default_mounts();
    if let Some(resolv) = &c.resolv_conf {
        // The node's service discovery first among the name servers.
        mounts.push(bind(
            resolv,
            "/etc/resolv.conf",
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    for m in &c.secret_mounts {
        mounts.push(bind(
            &m.source,
            &m.destination,
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    let args = if c.init {
        mounts.push(bind(
            opts.init,
            INIT_MOUNT,
            &["rbind", "ro", "nosuid", "nodev"],
        )?);
        [INIT_MOUNT.to_owned(), "--".to_owned()]
            .into_iter()
            .chain(c.args.iter().cloned())
            .collect()
    } else {
        c.args.clone()
    };
    let caps = capabilities(&c.cap_add, &c.cap_drop)?;
    let seccomp = crate::seccomp::profile(&caps).map_err(err)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(err)?;
    let mut user = UserBuilder::default().uid(c.uid).gid(c.gid);
    if !c.additional_gids.is_empty() {
        user = user.additional_gids(c.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build().map_err(err)?)
        .args(args)
        .env(c.env.clone())
        .cwd(c.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits(&c.ulimits)?)
        .no_new_privileges(true)
        .build()
        .map_err(err)?;
    let memory_bytes = i64::from(c.memory_mib) * 1024 * 1024;
    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(err)?])
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory_bytes)
                .swap(memory_bytes)
                .build()
                .map_err(err)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(u64::from(c.cpu_units.max(2)))
                .quota(cpu_quota(c.cpu_units))
                .period(CPU_PERIOD_US)
                .build()
                .map_err(err)?,
        );
    if let Some(limit) = opts.pids_limit.filter(|l| *l > 0) {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(err)?,
        );
    }
    let resources = resources.build().map_err(err)?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| {
        let mut ns = LinuxNamespaceBuilder::default().typ(typ);
        if let (LinuxNamespaceType::Network, Some(path)) = (typ, &c.netns) {
            ns = ns.path(path.clone());
        }
        ns.build().map_err(err)
    })
    .collect::<Result<Vec<_>, _>>()?;
    let mut masked = get_default_maskedpaths();
    masked.extend(MORE_MASKED_PATHS.map(String::from));
    let linux = LinuxBuilder::default()
        .cgroups_path(format!(
            "{}/{}",
            opts.cgroup_parent.trim_end_matches('/'),
            c.id
        ))
        .resources(resources)
        .namespaces(namespaces)
        .masked_paths(masked)
        .readonly_paths(get_default_readonly_paths())
        .seccomp(seccomp)
        .build()
        .map_err(err)?;
    SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(c.readonly_root)
                .build()
                .map_err(err)?,
        )
        .hostname(c.task_id.chars().take(12).collect::<String>())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

/// Takes the CPU quota out of `spec` and answers the limits to set once the container runs:
/// its CPU (quota included), memory and PIDs limits as the spec had them. runc's init, the
/// container's init and the process's start run inside the container's cgroup: under the
/// quota of a small task (16 CPU units: 1.6 ms of CPU per 100 ms) they took about a second
/// where `ctr run` takes 0.1 s (issue #20's start scenario). The shares go too: a small
/// task's weight (16 units: 1 of cgroup v2's 10,000) left runc's init, which compiles the
/// seccomp filter, the last to run whenever anything else wanted the CPU (about 15 ms of a
/// start with two busy processes on two cores).
pub fn lift_cpu_quota(spec: &mut Spec) -> Option<LinuxResources> {
    let resources = spec.linux_mut().as_mut()?.resources_mut().as_mut()?;
    resources.cpu().as_ref()?.quota()?;
    let mut limits = resources.clone();
    // Devices are not limits `runc update` applies.
    limits.set_devices(None);
    if let Some(cpu) = resources.cpu_mut() {
        cpu.set_quota(None);
        cpu.set_shares(None);
    }
    Some(limits)
}

/// The cgroup v2 files that set `limits`' CPU share and quota, with what to write in each, as
/// runc 1.1 (Debian 12's) writes them: the weight from the shares (2–262,144 onto 1–10,000,
/// linearly; runc 1.3.2 and later map them on a curve), then `cpu.max`
/// (`QUOTA PERIOD`, `max` without a quota). The memory and PIDs limits are not lifted at
/// creation ([`lift_cpu_quota`]), so they are not here.
pub fn cgroup_v2_cpu(limits: &LinuxResources) -> Vec<(&'static str, String)> {
    let Some(cpu) = limits.cpu() else {
        return Vec::new();
    };
    let mut files = Vec::new();
    if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
        let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9_999 / 262_142;
        files.push(("cpu.weight", weight.to_string()));
    }
    if cpu.quota().is_some() || cpu.period().is_some() {
        let quota = cpu
            .quota()
            .filter(|q| *q > 0)
            .map_or_else(|| "max".to_owned(), |q| q.to_string());
        let period = cpu.period().unwrap_or(100_000);
        files.push(("cpu.max", format!("{quota} {period}")));
    }
    files
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runtime::SecretMount;

    fn opts(init: &Path) -> SpecOptions<'_> {
        SpecOptions {
            cgroup_parent: "/berth/node-1",
            init,
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
        }
    }

    fn image() -> ImageInfo {
        ImageInfo {
            reference: "demo".into(),
            digest: "sha256:00".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "MODE=prod".into()],
            working_dir: None,
            user: Some("1000:1001".into()),
            rootfs_id: "sha256:11".into(),
            pulled: false,
        }
    }

    #[test]
    fn args_follow_docker_rules() {
        let mut def = ContainerDefinition::new("app", "demo");
        assert_eq!(process_args(&image(), &def), ["/entry", "serve"]);
        def.command = vec!["echo".into(), "hi".into()];
        assert_eq!(process_args(&image(), &def), ["/entry", "echo", "hi"]);
        def.entry_point = vec!["sh".into(), "-c".into()];
        def.command = vec![];
        assert_eq!(process_args(&image(), &def), ["sh", "-c"]);
    }

    #[test]
    fn env_overrides_image_env() {
        let mut def = ContainerDefinition::new("app", "demo");
        def.environment = BTreeMap::from([("MODE".into(), "dev".into()), ("X".into(), "1".into())]);
        assert_eq!(
            process_env(&image(), &def, None),
            ["PATH=/bin", "MODE=dev", "X=1"]
        );
        // Secret variables come last and replace the image's.
        let secrets = ContainerSecrets {
            environment: BTreeMap::from([("PATH".into(), "/secret".into())]),
            ..Default::default()
        };
        assert_eq!(
            process_env(&image(), &def, Some(&secrets)),
            ["MODE=dev", "X=1", "PATH=/secret"]
        );
    }

    #[test]
    fn user_and_quota() {
        let mut def = ContainerDefinition::new("app", "demo");
        assert_eq!(process_user(&image(), &def), "1000:1001");
        def.user = Some("app".into());
        assert_eq!(process_user(&image(), &def), "app");
        let rootless = ImageInfo {
            user: None,
            ..image()
        };
        assert_eq!(
            process_user(&rootless, &ContainerDefinition::new("a", "b")),
            ""
        );
        assert_eq!(cpu_quota(1024), 100_000);
        assert_eq!(cpu_quota(256), 25_000);
        assert_eq!(cpu_quota(1), 1000);
    }

    #[test]
    fn spec_has_limits_caps_and_no_new_privileges() {
        let c = ContainerSpec {
            id: "t1-app".into(),
            task_id: "t1".into(),
            container_name: "app".into(),
            image: image(),
            args: vec!["echo".into(), "hello".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            cpu_units: 512,
            memory_mib: 64,
            log_path: "/tmp/x".into(),
            netns: Some("/run/netns/berth-t1".into()),
            init: false,
            resolv_conf: Some("/var/lib/berth/dns/default.resolv.conf".into()),
            readonly_root: false,
            cap_add: vec![],
            cap_drop: vec![],
            ulimits: vec![],
            secret_mounts: vec![],
        };
        let spec = build_spec(&c, &opts(Path::new("/init"))).expect("spec builds");
        let resolv = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new("/etc/resolv.conf"))
            .and_then(|m| m.source().clone());
        assert_eq!(
            resolv,
            Some("/var/lib/berth/dns/default.resolv.conf".into())
        );
        let json = serde_json::to_value(&spec).expect("spec serialises");
        assert_eq!(json["linux"]["cgroupsPath"], "/berth/node-1/t1-app");
        assert_eq!(
            json["linux"]["resources"]["memory"]["limit"],
            64 * 1024 * 1024
        );
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["devices"][0]["allow"], false);
        // Created without the quota; set, with the other limits, once it runs.
        let mut created = spec.clone();
        let limits = lift_cpu_quota(&mut created).expect("limits to set");
        let created = serde_json::to_value(&created).expect("spec serialises");
        assert_eq!(
            created["linux"]["resources"]["cpu"]["quota"],
            serde_json::Value::Null
        );
        assert_eq!(
            created["linux"]["resources"]["cpu"]["shares"],
            serde_json::Value::Null
        );
        assert_eq!(
            created["linux"]["resources"]["memory"],
            json["linux"]["resources"]["memory"]
        );
        let limits = serde_json::to_value(&limits).expect("limits serialise");
        assert_eq!(limits["cpu"], json["linux"]["resources"]["cpu"]);
        assert_eq!(limits["memory"], json["linux"]["resources"]["memory"]);
        assert_eq!(limits["devices"], serde_json::Value::Null);
        // What is written for them on cgroup v2, as runc converts them.
        let limits: LinuxResources = serde_json::from_value(limits).expect("limits");
        assert_eq!(
            cgroup_v2_cpu(&limits),
            [
                ("cpu.weight", "20".to_owned()),
                ("cpu.max", "50000 100000".to_owned())
            ]
        );
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(
            json["process"]["args"],
            serde_json::json!(["echo", "hello"])
        );
        assert_eq!(json["root"]["readonly"], false);
        let netns = json["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network").cloned());
        assert_eq!(
            netns.map(|n| n["path"].clone()),
            Some(serde_json::json!("/run/netns/berth-t1"))
        );
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(caps, DEFAULT_CAPABILITIES.len());
        assert!(json["process"]["capabilities"]["bounding"]
            .as_array()
            .is_some_and(|c| !c.contains(&serde_json::json!("CAP_SYS_ADMIN"))));
        let init_mounts = |json: &serde_json::Value| {
            json["mounts"].as_array().map_or(0, |m| {
                m.iter().filter(|m| m["destination"] == INIT_MOUNT).count()
            })
        };
        assert_eq!(init_mounts(&json), 0, "no init when turned off");

        let with_init = ContainerSpec { init: true, ..c };
        let spec =
            build_spec(&with_init, &opts(Path::new("/usr/bin/tini-static"))).expect("spec builds");
        let json = serde_json::to_value(&spec).expect("spec serialises");
        assert_eq!(
            json["process"]["args"],
            serde_json::json!([INIT_MOUNT, "--", "echo", "hello"])
        );
        assert_eq!(init_mounts(&json), 1);
        let mount = json["mounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["destination"] == INIT_MOUNT).cloned())
            .unwrap_or_default();
        assert_eq!(mount["source"], "/usr/bin/tini-static");
        assert_eq!(
            mount["options"],
            serde_json::json!(["rbind", "ro", "nosuid", "nodev"])
        );
    }

    fn container() -> ContainerSpec {
        ContainerSpec {
            id: "t1-app".into(),
            task_id: "t1".into(),
            container_name: "app".into(),
            image: image(),
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "TOKEN=hunter2".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1001,
            additional_gids: vec![3456],
            cpu_units: 256,
            memory_mib: 64,
            log_path: "/tmp/x".into(),
            netns: None,
            init: true,
            resolv_conf: None,
            readonly_root: false,
            cap_add: vec![],
            cap_drop: vec![],
            ulimits: vec![],
            secret_mounts: vec![],
        }
    }

    fn json(c: &ContainerSpec, pids_limit: Option<i64>) -> serde_json::Value {
        let opts = SpecOptions {
            pids_limit,
            ..opts(Path::new("/init"))
        };
        serde_json::to_value(build_spec(c, &opts).expect("spec builds")).expect("serialises")
    }

    fn names(v: &serde_json::Value) -> Vec<String> {
        let mut names: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_sandbox_is_at_least_dockers() {
        let spec = json(&container(), Some(64));
        // Seccomp: an allow-list refusing with EPERM.
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(spec["linux"]["seccomp"]["defaultErrnoRet"], 1);
        let allowed: Vec<String> = spec["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        assert!(allowed.contains(&"execve".to_owned()));
        assert!(!allowed.contains(&"unshare".to_owned()));
        // The pids limit, or none.
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 64);
        assert!(json(&container(), None)["linux"]["resources"]
            .get("pids")
            .is_none());
        assert!(json(&container(), Some(0))["linux"]["resources"]
            .get("pids")
            .is_none());
        // /proc without suid, exec or devices; the other kernel mounts as Docker has them.
        let mount = |dest: &str| {
            spec["mounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["destination"] == dest).cloned())
                .unwrap_or_default()
        };
        assert_eq!(
            mount("/proc")["options"],
            serde_json::json!(["nosuid", "noexec", "nodev"])
        );
        assert_eq!(
            mount("/sys")["options"],
            serde_json::json!(["nosuid", "noexec", "nodev", "ro"])
        );
        let masked = names(&spec["linux"]["maskedPaths"]);
        for path in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
        ] {
            assert!(masked.contains(&path.to_owned()), "{path} is not masked");
        }
        assert!(names(&spec["linux"]["readonlyPaths"]).contains(&"/proc/sys".to_owned()));
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["user"]["uid"], 1000);
        assert_eq!(spec["process"]["user"]["gid"], 1001);
        assert_eq!(
            spec["process"]["user"]["additionalGids"],
            serde_json::json!([3456])
        );
        assert_eq!(spec["root"]["readonly"], false);
        assert_eq!(
            spec["process"]["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
    }

    #[test]
    fn definitions_tighten_or_loosen_it() {
        let c = ContainerSpec {
            readonly_root: true,
            cap_add: vec!["sys_time".into(), "CAP_NET_ADMIN".into()],
            cap_drop: vec!["CHOWN".into()],
            ulimits: vec![
                Ulimit {
                    name: "nofile".into(),
                    soft_limit: 2048,
                    hard_limit: 4096,
                },
                Ulimit {
                    name: "core".into(),
                    soft_limit: 0,
                    hard_limit: 0,
                },
            ],
            secret_mounts: vec![SecretMount {
                source: "/var/lib/berth/secrets/t1/app/0".into(),
                destination: "/run/secrets/tls".into(),
            }],
            ..container()
        };
        let spec = json(&c, Some(4096));
        assert_eq!(spec["root"]["readonly"], true);
        let caps = names(&spec["process"]["capabilities"]["bounding"]);
        assert!(caps.contains(&"CAP_SYS_TIME".to_owned()));
        assert!(caps.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(!caps.contains(&"CAP_CHOWN".to_owned()));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() + 1);
        assert_eq!(caps, names(&spec["process"]["capabilities"]["effective"]));
        assert_eq!(caps, names(&spec["process"]["capabilities"]["permitted"]));
        assert_eq!(
            names(&spec["process"]["capabilities"]["ambient"]),
            Vec::<String>::new()
        );
        // SYS_TIME opens the clock-setting syscalls.
        let allowed = names(&spec["linux"]["seccomp"]["syscalls"][0]["names"]);
        assert!(allowed.contains(&"clock_settime".to_owned()));
        assert_eq!(
            spec["process"]["rlimits"],
            serde_json::json!([
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 2048},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ])
        );
        let secret = spec["mounts"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|m| m["destination"] == "/run/secrets/tls")
                    .cloned()
            })
            .unwrap_or_default();
        assert_eq!(secret["source"], "/var/lib/berth/secrets/t1/app/0");
        assert_eq!(
            secret["options"],
            serde_json::json!(["rbind", "ro", "nosuid", "nodev", "noexec"])
        );

        // drop ALL, add one back.
        let only = capabilities(&["NET_BIND_SERVICE".into()], &["ALL".into()]).expect("caps");
        assert_eq!(only, HashSet::from([Capability::NetBindService]));
        assert!(!crate::seccomp::allows(&only, "chroot"));
        assert!(matches!(
            capabilities(&["NOT_A_CAP".into()], &[]),
            Err(RuntimeError::UnknownCapability(_))
        ));
    }

    #[test]
    fn debug_of_a_container_spec_shows_no_values() {
        let printed = format!("{:?}", container());
        assert!(printed.contains("TOKEN"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
