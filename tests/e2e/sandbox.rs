//! The sandbox, checked from inside real containers (issue 16): the seccomp profile, the pids
//! limit, the CPU quota, /proc's mount flags, the user a name resolves to (and a name that does not resolve),
//! a read-only root, a dropped capability, a ulimit, and the ephemeral storage limit. One
//! cluster for every check; the tasks run at the same time.

use std::time::Duration;

use berth_tests::{cli, containerd_containers, poll, wait_stopped, AgentProc, Env, ServerProc};

use crate::{stderr, stdout, TIMEOUT};

/// The agent's pids limit in this test: small, so a fork bomb meets it at once.
const PIDS_LIMIT: usize = 64;

/// One task definition per check, `sandbox-NAME`, each a busybox container running `script`.
fn manifest(image: &str) -> String {
    let def = |name: &str, extra_spec: &str, extra_container: &str, script: &str| {
        format!(
            "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: sandbox-{name}\nspec:\n  cpu: 128\n{extra_spec}  containers:\n    - name: app\n      image: {image}\n      stopTimeout: 1\n{extra_container}      command: [sh, -c, {script:?}]\n"
        )
    };
    [
        def(
            "seccomp",
            "  memory: 128\n",
            "",
            "grep '^Seccomp:' /proc/self/status; grep ' /proc proc ' /proc/mounts; \
             unshare -U true 2>/dev/null && echo unshared || echo refused",
        ),
        def(
            "pids",
            "  memory: 128\n",
            "",
            "( i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); echo $i > /tmp/n; done ) 2>/dev/null; \
             n=$(cat /tmp/n); killall sleep; echo started $n; cat /sys/fs/cgroup/pids/pids.max",
        ),
        // The CPU quota is set once the container runs (runc's init runs without it): read
        // a moment after the start. cgroup v1 or v2, whichever the host mounts.
        def(
            "cpu",
            "  memory: 128\n",
            "",
            "sleep 1; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us \
             2>/dev/null || cat /sys/fs/cgroup/cpu.max",
        ),
        def("user", "  memory: 128\n", "      user: nobody\n", "id -u; id -g"),
        def("ghost", "  memory: 128\n", "      user: ghost\n", "id -u"),
        def(
            "readonly",
            "  memory: 128\n",
            "      readonlyRootFilesystem: true\n",
            "touch /x 2>/dev/null && echo wrote || echo refused; echo ok > /dev/shm/x && echo tmpfs",
        ),
        def(
            "nochown",
            "  memory: 128\n",
            "      linuxParameters:\n        capabilities:\n          drop: [CHOWN]\n",
            "touch /tmp/f; chown 1:1 /tmp/f 2>/dev/null && echo chowned || echo refused",
        ),
        def(
            "ulimit",
            "  memory: 128\n",
            "      ulimits:\n        - {name: nofile, softLimit: 2048, hardLimit: 4096}\n",
            "ulimit -n; ulimit -Hn",
        ),
        def(
            "storage",
            "  memory: 512\n  ephemeralStorage:\n    sizeInGiB: 1\n",
            "",
            "dd if=/dev/zero of=/big bs=1M count=1300 2>/dev/null; sleep 600",
        ),
    ]
    .join("---\n")
}

/// Runs `sandbox-NAME` to completion and answers its output.
async fn output_of(addr: &str, name: &str) -> anyhow::Result<String> {
    let out = cli(
        addr,
        &[
            "run",
            "--wait",
            "--task-definition",
            &format!("sandbox-{name}"),
        ],
    )
    .await?;
    anyhow::ensure!(
        out.status.code() == Some(0),
        "sandbox-{name} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    Ok(stdout(&out))
}

#[tokio::test]
async fn the_sandbox_holds_from_inside_real_containers() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let limit = PIDS_LIMIT.to_string();
    let agent = AgentProc::start_with(&env, &addr, "node-1", &["--pids-limit", &limit]).await?;
    let file = env.path("sandbox.yaml");
    std::fs::write(&file, manifest(&env.image))?;
    let out = cli(&addr, &["apply", "-f", &file.to_string_lossy()]).await?;
    assert!(out.status.success(), "stderr: {}", stderr(&out));

    // The storage hog first: it has the furthest to go.
    let out = cli(&addr, &["run", "--task-definition", "sandbox-storage"]).await?;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let hog = stdout(&out).trim().to_owned();
    let out = cli(&addr, &["run", "--task-definition", "sandbox-ghost"]).await?;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let ghost = stdout(&out).trim().to_owned();

    // An image whose USER is a name runs as that name's uid from the image's /etc/passwd.
    let busybox = berth_dev::find_program("busybox").expect("busybox-static");
    let named = format!("{}/named-user:1", env.registry.addr);
    berth_dev::push_busybox_image_with_user(&busybox, &named, "nobody").await?;
    let out = cli(&addr, &["run", "--wait", &named, "--", "id", "-u"]).await?;
    assert_eq!(stdout(&out), "65534\n", "stderr: {}", stderr(&out));

    let (seccomp, pids, cpu, user, readonly, nochown, ulimit) = tokio::try_join!(
        output_of(&addr, "seccomp"),
        output_of(&addr, "pids"),
        output_of(&addr, "cpu"),
        output_of(&addr, "user"),
        output_of(&addr, "readonly"),
        output_of(&addr, "nochown"),
        output_of(&addr, "ulimit"),
    )?;

    // Seccomp in filter mode, and a syscall it refuses (a user namespace needs no capability,
    // so only the profile stands in the way); /proc without suid, exec or devices.
    let lines: Vec<&str> = seccomp.lines().collect();
    assert_eq!(lines.first().copied(), Some("Seccomp:\t2"), "{seccomp}");
    let proc_flags = lines.get(1).copied().unwrap_or_default();
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(proc_flags.contains(flag), "/proc is mounted {proc_flags:?}");
    }
    assert_eq!(lines.get(2).copied(), Some("refused"), "{seccomp}");

    // The fork bomb stops at the pids limit: tini, two shells and the sleeps fit in it.
    let mut words = pids.split_whitespace();
    assert_eq!(words.next(), Some("started"), "{pids}");
    let started: usize = words.next().unwrap_or_default().parse()?;
    assert!(
        (PIDS_LIMIT - 8..PIDS_LIMIT).contains(&started),
        "started {started} sleeps under a limit of {PIDS_LIMIT}: {pids}"
    );
    assert_eq!(words.next(), Some(limit.as_str()), "{pids}");

    // 128 CPU units: an eighth of a CPU, 12.5 ms in each 100 ms period.
    let quota: Vec<&str> = cpu.split_whitespace().collect();
    assert_eq!(quota, ["12500", "100000"], "{cpu}");

    // A user name resolves against the image's /etc/passwd; an unknown one fails the task.
    assert_eq!(user, "65534\n65534\n");
    let task = wait_stopped(&addr, &ghost, TIMEOUT).await?;
    assert_eq!(task["stopCode"], "TaskFailedToStart", "{task}");
    let reason = task["stoppedReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("user \"ghost\" not found in the image's /etc/passwd"),
        "{reason}"
    );
    assert!(task.get("startedAt").is_none(), "{task}");

    assert_eq!(
        readonly, "refused\ntmpfs\n",
        "a read-only root, a writable /dev/shm"
    );
    assert_eq!(nochown, "refused\n", "chown without CAP_CHOWN");
    assert_eq!(ulimit, "2048\n4096\n");

    // The task that writes 1.3 GiB into a 1 GiB ephemeral storage is stopped for it.
    let task = wait_stopped(&addr, &hog, Duration::from_secs(90)).await?;
    let reason = task["stoppedReason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("ephemeral storage: the task wrote 1.")
            && reason.ends_with("GiB, over its 1 GiB limit (ephemeralStorage.sizeInGiB)"),
        "{task}"
    );
    assert_eq!(task["stopCode"], "EssentialContainerExited", "{task}");

    // Nothing is left: no container, no secret directory.
    poll("containers to be removed", TIMEOUT, || async {
        containerd_containers(&env.containerd.socket, &agent.namespace)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await?;
    let secrets = env.path("agent-node-1").join("secrets");
    assert_eq!(std::fs::read_dir(&secrets)?.count(), 0);
    Ok(())
}
