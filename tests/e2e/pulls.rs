//! Pulls stream layers into containerd and check each layer's declared size against what
//! arrives (issue 16): a manifest claiming a 100 GB layer, or a layer larger than its manifest
//! says, fails the task's pull with a reason naming the blob and the sizes; nothing of the
//! layer stays in containerd's content store, and the agent goes on running tasks — the next
//! one pulls the very same layer.

use berth_tests::{cli, ctr, wait_stopped};

use crate::{stderr, stdout, Cluster, TIMEOUT};

#[tokio::test]
async fn a_layer_that_is_not_its_declared_size_fails_the_pull_and_the_agent_keeps_running(
) -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let busybox = berth_dev::find_program("busybox")
        .ok_or_else(|| anyhow::anyhow!("busybox-static is not installed"))?;
    let registry = c.env.registry.addr;
    let huge = format!("{registry}/huge:1");
    let declared = 100u64 << 30;
    let layer = berth_dev::push_busybox_image_declaring(&busybox, &huge, declared as i64).await?;
    let small = format!("{registry}/small:1");
    berth_dev::push_busybox_image_declaring(&busybox, &small, 16).await?;

    let cases = [
        (
            &huge,
            format!("blob {layer} was declared {declared} bytes but "),
        ),
        (
            &small,
            format!("blob {layer}: more than the declared 16 bytes arrived"),
        ),
    ];
    for (image, expected) in cases {
        let out = cli(&c.addr(), &["run", image, "--", "true"]).await?;
        assert!(out.status.success(), "stderr: {}", stderr(&out));
        let task_id = stdout(&out).trim().to_owned();
        let task = wait_stopped(&c.addr(), &task_id, TIMEOUT).await?;
        assert_eq!(task["stopCode"], "TaskFailedToStart", "{task}");
        let reason = task["stoppedReason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&format!("invalid image {image}")) && reason.contains(&expected),
            "reason {reason:?} does not say {expected:?} about {image}"
        );
    }

    // Nothing of the layer was committed, and no ingest was left behind.
    let ctd = |args: &'static [&'static str]| {
        let (socket, namespace) = (c.env.containerd.socket.clone(), c.agent.namespace.clone());
        async move {
            let out = ctr(&socket, &namespace, args).await?;
            anyhow::ensure!(out.status.success(), "ctr {args:?}: {}", stderr(&out));
            anyhow::Ok(stdout(&out))
        }
    };
    let content = ctd(&["content", "ls", "--quiet"]).await?;
    assert!(!content.contains(&layer), "{content}");
    let ingests = ctd(&["content", "active"]).await?;
    assert!(!ingests.contains(&layer), "{ingests}");

    // The agent still runs tasks, and the image it pulls shares that layer.
    let out = cli(
        &c.addr(),
        &["run", "--wait", &c.env.image, "--", "echo", "hello"],
    )
    .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");
    let content = ctd(&["content", "ls", "--quiet"]).await?;
    assert!(content.contains(&layer), "{content}");
    Ok(())
}
