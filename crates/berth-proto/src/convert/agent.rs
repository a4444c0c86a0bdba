//! The agent protocol: assignments the servers push to a node, and what agents send back.

use berth_model as m;

use super::{all_to_wire, try_all, ConversionError, FromWire as _};
use crate::v1;

impl From<m::Assignment> for v1::TaskAssignment {
    fn from(a: m::Assignment) -> Self {
        Self {
            task_id: a.task_id,
            namespace: a.namespace,
            task_definition: a.task_definition.to_string(),
            desired_status: v1::DesiredStatus::from(a.desired_status) as i32,
            cpu: a.cpu,
            memory: a.memory,
            containers: all_to_wire(a.containers),
            last_status: v1::TaskStatus::from(a.last_status) as i32,
            deregistration_delay: a.deregistration_delay,
            ephemeral_storage_bytes: a.ephemeral_storage.bytes(),
            secrets_error: a.secrets.error.unwrap_or_default(),
            secrets: a
                .secrets
                .containers
                .into_iter()
                .map(|(container_name, c)| {
                    let (registry_username, registry_password) = c.registry.unwrap_or_default();
                    v1::ContainerSecrets {
                        container_name,
                        environment: c.environment,
                        files: c
                            .files
                            .into_iter()
                            .map(|(path, files)| v1::SecretDirectory { path, files })
                            .collect(),
                        registry_username,
                        registry_password,
                    }
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::TaskAssignment> for m::Assignment {
    type Error = ConversionError;

    fn try_from(a: v1::TaskAssignment) -> Result<Self, Self::Error> {
        Ok(Self {
            task_definition: a.task_definition.parse()?,
            desired_status: m::DesiredStatus::from_wire("desiredStatus", a.desired_status)?,
            // Only decides whether a task without containers here ran before: a status this
            // side does not know (a newer server) counts as not run, so the task starts.
            last_status: m::TaskStatus::from_wire("lastStatus", a.last_status)
                .unwrap_or(m::TaskStatus::Pending),
            containers: try_all(a.containers)?,
            task_id: a.task_id,
            namespace: a.namespace,
            cpu: a.cpu,
            memory: a.memory,
            deregistration_delay: a.deregistration_delay,
            // Whole GiB on the wire would do, but bytes leave room for finer limits. 0: a
            // server that does not send it, so the default.
            ephemeral_storage: match a.ephemeral_storage_bytes {
                0 => m::EphemeralStorage::default(),
                bytes => m::EphemeralStorage {
                    size_in_gib: u32::try_from(bytes >> 30).unwrap_or(u32::MAX).max(1),
                },
            },
            secrets: m::TaskSecrets {
                error: super::opt_str(a.secrets_error),
                containers: a
                    .secrets
                    .into_iter()
                    .map(|c| {
                        let registry = (!c.registry_username.is_empty())
                            .then_some((c.registry_username, c.registry_password));
                        let files = c.files.into_iter().map(|d| (d.path, d.files)).collect();
                        (
                            c.container_name,
                            m::ContainerSecrets {
                                environment: c.environment,
                                files,
                                registry,
                            },
                        )
                    })
                    .collect(),
            },
        })
    }
}

/// The most one `DesiredChanges` message carries, encoded, unless a single assignment is
/// larger: a quarter of gRPC's default 4 MiB limit.
pub const DESIRED_CHANGES_BYTES: usize = 1 << 20;

/// Changes to a node's desired set as messages: `upserts`, `retired` (and, with `reset`,
/// `kept`) split so that each message stays under [`DESIRED_CHANGES_BYTES`] (an assignment
/// larger than that travels alone); the first message carries `reset`, `removed` and (with
/// `reset`) `held`, only the last `complete`. Always at least one message.
pub fn desired_changes(
    reset: bool,
    upserts: Vec<m::Assignment>,
    removed: Vec<String>,
    retired: Vec<String>,
    kept: Vec<String>,
    held: Vec<String>,
) -> Vec<v1::DesiredChanges> {
    use prost::Message as _;
    let mut messages = vec![v1::DesiredChanges {
        reset,
        removed,
        lists_kept: reset,
        held: if reset { held } else { Vec::new() },
        ..Default::default()
    }];
    let mut size = messages[0].encoded_len();
    let mut room = |len: usize, messages: &mut Vec<v1::DesiredChanges>| {
        if size + len > DESIRED_CHANGES_BYTES && size > 0 {
            messages.push(v1::DesiredChanges::default());
            size = 0;
        }
        size += len;
    };
    for a in upserts {
        let wire = v1::TaskAssignment::from(a);
        room(wire.encoded_len() + 8, &mut messages);
        if let Some(last) = messages.last_mut() {
            last.upserts.push(wire);
        }
    }
    if reset {
        for id in kept {
            room(id.len() + 4, &mut messages);
            if let Some(last) = messages.last_mut() {
                last.kept.push(id);
            }
        }
    }
    // A node's tombstones, all named with a whole set, are as many as the tasks it finished
    // within the retention: at a few tasks a second, more than one message holds.
    for id in retired {
        room(id.len() + 4, &mut messages);
        if let Some(last) = messages.last_mut() {
            last.retired.push(id);
        }
    }
    if let Some(last) = messages.last_mut() {
        last.complete = true;
    }
    messages
}

/// The most one status or metrics report of an agent carries, encoded, unless one item alone
/// is larger. The leader's end of an agent's stream keeps its receive buffers as large as the
/// largest message (and frame) it read for the stream's life: with reports of whole batches,
/// 18 KiB an agent once its tasks had started (90 MiB for 5,000 agents). The leader proposes
/// the parts of a report that arrive together as one write.
pub const REPORT_BYTES: usize = 3 * 1024;

/// `items` in runs that each encode in at most [`REPORT_BYTES`] (an item larger than that
/// goes alone), in order; none for none.
pub fn report_parts<T: prost::Message>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut parts: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for item in items {
        // The field's tag and length prefix: at most 1 + 3 bytes for items this small.
        let len = item.encoded_len() + 4;
        match parts.last_mut() {
            Some(part) if size + len <= REPORT_BYTES => {
                part.push(item);
                size += len;
            }
            _ => {
                parts.push(vec![item]);
                size = len;
            }
        }
    }
    parts
}

/// One task's resource usage, as an agent reports it: `(task ID, metrics)`.
impl From<(String, m::TaskMetrics)> for v1::TaskSample {
    fn from((task_id, metrics): (String, m::TaskMetrics)) -> Self {
        Self {
            task_id,
            metrics: Some(metrics.into()),
        }
    }
}

/// A `Register` as the node it describes (ACTIVE, nothing allocated, no events yet); the
/// name must be a valid object name.
impl TryFrom<v1::Register> for m::Node {
    type Error = ConversionError;

    fn try_from(r: v1::Register) -> Result<Self, Self::Error> {
        m::validate_name("nodeName", &r.node_name)?;
        Ok(Self {
            name: r.node_name,
            address: r.address,
            status: m::NodeStatus::Active,
            attributes: r.attributes.into_iter().collect(),
            cpu: m::Resources {
                total: r.cpu,
                allocated: 0,
            },
            memory: m::Resources {
                total: r.memory,
                allocated: 0,
            },
            registered_at: 0,
            down_since: None,
            events: m::EventLog::default(),
        })
    }
}

/// The samples of a metrics report, by task ID (samples without metrics are skipped).
pub fn task_samples(report: v1::MetricsReport) -> Vec<(String, m::TaskMetrics)> {
    report
        .samples
        .into_iter()
        .filter_map(|s| Some((s.task_id, s.metrics?.into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment() -> m::Assignment {
        let mut app = m::ContainerDefinition::new("app", "busybox");
        app.essential = false;
        m::Assignment {
            task_id: "t1".into(),
            namespace: "default".into(),
            task_definition: "web:3".parse().expect("a valid reference"),
            desired_status: m::DesiredStatus::Stopped,
            cpu: 256,
            memory: 64,
            containers: vec![app, m::ContainerDefinition::new("sidecar", "envoy")],
            last_status: m::TaskStatus::Running,
            deregistration_delay: 5,
            ephemeral_storage: m::EphemeralStorage::default(),
            secrets: m::TaskSecrets::default(),
        }
    }

    #[test]
    fn a_large_desired_set_is_split_into_messages_under_the_limit() {
        // 400 tasks of ~16 KiB each: about 6.4 MiB in one message, over gRPC's 4 MiB.
        let tasks: Vec<m::Assignment> = (0..400)
            .map(|i| {
                let mut a = assignment();
                a.task_id = format!("t{i}");
                a.containers[0]
                    .environment
                    .insert("PAD".into(), "x".repeat(16 << 10));
                a
            })
            .collect();
        let kept: Vec<String> = (0..40_000).map(|i| format!("{i:036}")).collect();
        let retired: Vec<String> = (0..40_000).map(|i| format!("r{i:035}")).collect();
        let messages = desired_changes(
            true,
            tasks,
            vec!["gone".into()],
            retired,
            kept,
            vec!["held".into()],
        );
        assert!(messages.len() >= 9, "{} messages", messages.len());
        for (i, m) in messages.iter().enumerate() {
            use prost::Message as _;
            assert!(m.encoded_len() <= DESIRED_CHANGES_BYTES, "message {i}");
            assert_eq!(m.reset, i == 0);
            assert_eq!(m.complete, i == messages.len() - 1);
        }
        assert_eq!(messages.iter().map(|m| m.upserts.len()).sum::<usize>(), 400);
        assert_eq!(messages[0].removed, ["gone"]);
        assert_eq!(messages[0].held, ["held"]);
        // 40,000 IDs of 36 bytes, kept and retired each: more than a message holds, split
        // too, every one sent once.
        assert_eq!(messages.iter().map(|m| m.kept.len()).sum::<usize>(), 40_000);
        let retired: Vec<&String> = messages.iter().flat_map(|m| &m.retired).collect();
        assert_eq!(retired.len(), 40_000);
        assert_eq!(retired[0], &format!("r{:035}", 0));
        // A change of one task is one small message; `kept` goes only with a whole set.
        let one = desired_changes(
            false,
            vec![assignment()],
            Vec::new(),
            Vec::new(),
            vec!["x".into()],
            vec!["y".into()],
        );
        assert_eq!(one.len(), 1);
        assert!(one[0].complete && !one[0].reset && one[0].kept.is_empty());
        assert!(one[0].held.is_empty(), "held goes only with a whole set");
    }

    #[test]
    fn reports_are_split_under_the_size_of_a_part() {
        use prost::Message as _;
        let update = |i: usize, reason: usize| v1::TaskStatusUpdate {
            task_id: format!("{i:036}"),
            event: "r".repeat(reason),
            ..Default::default()
        };
        assert!(report_parts(Vec::<v1::TaskStatusUpdate>::new()).is_empty());
        let small: Vec<_> = (0..300).map(|i| update(i, 20)).collect();
        let parts = report_parts(small.clone());
        assert!(
            parts.len() > 1,
            "300 updates of ~60 bytes are more than one part"
        );
        for part in &parts {
            let report = v1::StatusReport {
                updates: part.clone(),
            };
            assert!(
                report.encoded_len() <= REPORT_BYTES,
                "{}",
                report.encoded_len()
            );
        }
        assert_eq!(parts.concat(), small, "every update, in order");
        // One update larger than a part travels alone, between the others.
        let mixed = vec![update(1, 10), update(2, 2 * REPORT_BYTES), update(3, 10)];
        let parts = report_parts(mixed.clone());
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(parts.concat(), mixed);
    }

    #[test]
    fn assignments_round_trip() {
        let wire = v1::TaskAssignment::from(assignment());
        assert_eq!(wire.task_definition, "web:3");
        assert_eq!(m::Assignment::try_from(wire).ok(), Some(assignment()));
    }

    #[test]
    fn an_unknown_desired_status_makes_an_assignment_unreadable() {
        let mut wire = v1::TaskAssignment::from(assignment());
        wire.desired_status = 42;
        assert_eq!(
            m::Assignment::try_from(wire.clone()).map_err(|e| e.to_string()),
            Err(crate::desired_status("desiredStatus", 42)
                .expect_err("42 is no desired status")
                .to_string())
        );
        wire.desired_status = v1::DesiredStatus::Running as i32;
        wire.last_status = 42;
        assert_eq!(
            m::Assignment::try_from(wire).map(|a| a.last_status).ok(),
            Some(m::TaskStatus::Pending),
            "an unknown last status counts as not run here, as agents always did"
        );
    }

    #[test]
    fn samples_carry_the_task_and_its_metrics() {
        let metrics = m::TaskMetrics {
            cpu_units: 512.5,
            memory_bytes: 1 << 20,
            sampled_at: 7,
        };
        let wire = v1::TaskSample::from(("t1".to_owned(), metrics));
        assert_eq!(wire.task_id, "t1");
        assert_eq!(wire.metrics.map(m::TaskMetrics::from), Some(metrics));
    }
}
