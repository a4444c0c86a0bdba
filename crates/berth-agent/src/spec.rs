//! Builds the OCI runtime spec for a container and derives its process from the image and the
//! container definition, as Docker and containerd do. Pure: tested without containerd.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capability,
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use berth_model::ContainerDefinition;

use crate::runtime::{ContainerSpec, ImageInfo, RuntimeError};

/// Where a container's init is mounted (read-only), as Docker mounts its own at
/// `/sbin/docker-init`.
pub const INIT_MOUNT: &str = "/sbin/berth-init";

/// The search path of a process whose image sets none (Docker's and containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// The image's environment with the definition's variables added or replacing same-named ones.
pub fn process_env(image: &ImageInfo, def: &ContainerDefinition) -> Vec<String> {
    let mut env: Vec<String> = image
        .env
        .iter()
        .filter(|kv| {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !def.environment.contains_key(key)
        })
        .cloned()
        .collect();
    if !env.iter().any(|kv| kv.starts_with("PATH=")) && !def.environment.contains_key("PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env.extend(def.environment.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// `uid[:gid]` from the image's USER when numeric; user names need the image's /etc/passwd
/// and are not supported yet (they run as root, as the image's build would have by default).
pub fn process_user(image: &ImageInfo) -> (u32, u32) {
    let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) else {
        return (0, 0);
    };
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().unwrap_or(0);
    let gid = g.parse().unwrap_or(uid);
    (uid, gid)
}

/// The CFS quota for `cpu_units` (1024 units = one full CPU per period).
pub fn cpu_quota(cpu_units: u32) -> i64 {
    let quota = u64::from(cpu_units) * CPU_PERIOD_US / u64::from(berth_model::CPU_UNITS_PER_VCPU);
    // The kernel rejects quotas below 1 ms.
    i64::try_from(quota.max(1000)).unwrap_or(i64::MAX)
}

/// The OCI runtime spec for `c`, with its cgroup under `cgroup_parent`; with `c.init`, its
/// process runs under `init` (a static binary on the host, mounted read-only): `init -- ARGS`.
pub fn build_spec(
    c: &ContainerSpec,
    cgroup_parent: &str,
    init: &Path,
) -> Result<Spec, RuntimeError> {
    let err = RuntimeError::Spec;
    let mut mounts = get_default_mounts();
    if let Some(resolv) = &c.resolv_conf {
        // The node's service discovery first among the name servers.
        mounts.push(
            MountBuilder::default()
                .destination("/etc/resolv.conf")
                .typ("bind")
                .source(resolv)
                .options(
                    ["rbind", "ro", "nosuid", "nodev", "noexec"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()
                .map_err(err)?,
        );
    }
    let args = if c.init {
        mounts.push(
            MountBuilder::default()
                .destination(INIT_MOUNT)
                .typ("bind")
                .source(init)
                .options(
                    ["rbind", "ro", "nosuid", "nodev"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()
                .map_err(err)?,
        );
        [INIT_MOUNT.to_owned(), "--".to_owned()]
            .into_iter()
            .chain(c.args.iter().cloned())
            .collect()
    } else {
        c.args.clone()
    };
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(err)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(c.uid)
                .gid(c.gid)
                .build()
                .map_err(err)?,
        )
        .args(args)
        .env(c.env.clone())
        .cwd(c.cwd.clone())
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .map_err(err)?])
        .no_new_privileges(true)
        .build()
        .map_err(err)?;
    let memory_bytes = i64::from(c.memory_mib) * 1024 * 1024;
    let resources = LinuxResourcesBuilder::default()
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
        )
        .build()
        .map_err(err)?;
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
    let linux = LinuxBuilder::default()
        .cgroups_path(format!("{}/{}", cgroup_parent.trim_end_matches('/'), c.id))
        .resources(resources)
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(err)?;
    SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(err)?,
        )
        .hostname(c.task_id.chars().take(12).collect::<String>())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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
            process_env(&image(), &def),
            ["PATH=/bin", "MODE=dev", "X=1"]
        );
    }

    #[test]
    fn user_and_quota() {
        assert_eq!(process_user(&image()), (1000, 1001));
        assert_eq!(
            process_user(&ImageInfo {
                user: Some("nobody".into()),
                ..image()
            }),
            (0, 0)
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
            cpu_units: 512,
            memory_mib: 64,
            log_path: "/tmp/x".into(),
            netns: Some("/run/netns/berth-t1".into()),
            init: false,
            resolv_conf: Some("/var/lib/berth/dns/default.resolv.conf".into()),
        };
        let spec = build_spec(&c, "/berth/node-1", Path::new("/init")).expect("spec builds");
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
        let spec = build_spec(
            &with_init,
            "/berth/node-1",
            Path::new("/usr/bin/tini-static"),
        )
        .expect("spec builds");
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
}
