//! Random and adversarial API messages: converting them and validating the result never
//! panics, and every refusal names the field it is about.

use berth_model as m;
use proptest::prelude::*;

use crate::v1;

/// Short strings, often empty, sometimes odd (control and non-ASCII characters, separators).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_-]{1,12}",
        "[ -~]{0,20}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
        Just("a".repeat(300)),
        Just("ALL".to_owned()),
        Just("db-creds:password".to_owned()),
        Just("/run/secrets/x".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), 0u32..5000, Just(u32::MAX)]
}

fn container() -> impl Strategy<Value = v1::ContainerDefinition> {
    (
        (text(), text(), prop::collection::vec(text(), 0..3)),
        (
            prop::option::of(number()),
            prop::option::of(number()),
            number(),
        ),
        prop::collection::vec((number(), number(), -1i32..4), 0..3),
        prop::collection::vec((text(), text()), 0..3),
        prop::collection::vec((text(), text()), 0..2),
        (text(), text(), prop::collection::vec(text(), 0..3)),
        prop::collection::vec((text(), any::<u64>(), any::<u64>()), 0..3),
        prop::collection::btree_map(text(), text(), 0..3),
    )
        .prop_map(
            |(
                (name, image, command),
                (cpu, memory, stop_timeout),
                ports,
                secrets,
                files,
                (credentials, user, caps),
                ulimits,
                environment,
            )| v1::ContainerDefinition {
                name,
                image,
                command,
                environment,
                essential: true,
                stop_timeout,
                cpu,
                memory,
                port_mappings: ports
                    .into_iter()
                    .map(|(container_port, host_port, protocol)| v1::PortMapping {
                        container_port,
                        host_port,
                        protocol,
                    })
                    .collect(),
                secrets: secrets
                    .into_iter()
                    .map(|(name, value_from)| v1::SecretEnvironment { name, value_from })
                    .collect(),
                secret_files: files
                    .into_iter()
                    .map(|(secret, path)| v1::SecretFile { secret, path })
                    .collect(),
                repository_credentials: credentials,
                user,
                capabilities_add: caps.clone(),
                capabilities_drop: caps,
                ulimits: ulimits
                    .into_iter()
                    .map(|(name, soft_limit, hard_limit)| v1::Ulimit {
                        name,
                        soft_limit,
                        hard_limit,
                    })
                    .collect(),
                ..Default::default()
            },
        )
}

fn task_definition() -> impl Strategy<Value = v1::TaskDefinitionSpec> {
    (
        text(),
        number(),
        number(),
        prop::collection::vec(container(), 0..12),
        prop::option::of(number()),
        prop::collection::vec((text(), text()), 0..3),
    )
        .prop_map(
            |(family, cpu, memory, containers, ephemeral_storage_gib, constraints)| {
                v1::TaskDefinitionSpec {
                    family,
                    cpu,
                    memory,
                    containers,
                    ephemeral_storage_gib,
                    placement: Some(v1::PlacementSpec {
                        strategy: Vec::new(),
                        constraints: constraints
                            .into_iter()
                            .map(|(r#type, expression)| v1::PlacementConstraint {
                                r#type,
                                expression,
                            })
                            .collect(),
                    }),
                    ..Default::default()
                }
            },
        )
}

/// A refusal names its field: it starts with a field path (`containers[1].memory: ...`,
/// `spec is required`).
fn names_a_field(message: &str) -> bool {
    let head = message.split([':', ' ']).next().unwrap_or_default();
    !head.is_empty()
        && head.starts_with(|c: char| c.is_ascii_alphabetic())
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "[].".contains(c))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn task_definitions_are_converted_and_validated_or_refused_by_field(
        wire in task_definition()
    ) {
        let refusal = match m::TaskDefinitionSpec::try_from(wire) {
            Err(e) => Some(e.to_string()),
            Ok(spec) => spec.validate().err().map(|e| e.to_string()),
        };
        if let Some(message) = refusal {
            prop_assert!(names_a_field(&message), "{message}");
        }
    }

    #[test]
    fn service_specs_are_converted_and_validated_or_refused_by_field(
        name in text(),
        task_definition in text(),
        desired_count in number(),
        min in number(),
        max in number(),
        hosts in prop::collection::vec((text(), text(), number()), 0..3),
    ) {
        let wire = v1::ServiceSpec {
            name,
            task_definition,
            desired_count,
            autoscaling: Some(v1::Autoscaling {
                min_count: min,
                max_count: max,
                ..Default::default()
            }),
            ingress: hosts
                .into_iter()
                .map(|(host, path_prefix, port)| v1::IngressRule {
                    host,
                    path_prefix,
                    container_name: "app".into(),
                    container_port: port,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let refusal = match m::ServiceSpec::try_from(wire) {
            Err(e) => Some(e.to_string()),
            Ok(spec) => spec.validate().err().map(|e| e.to_string()),
        };
        if let Some(message) = refusal {
            prop_assert!(names_a_field(&message), "{message}");
        }
    }
}
