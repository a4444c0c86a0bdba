//! Task definitions: the spec a user registers, its immutable revisions, and their containers.

use berth_model as m;

use super::placement::{placement_from_wire, placement_to_wire};
use super::{all_to_wire, meta, opt_str, try_all, ConversionError, FromWire as _};
use crate::v1;

impl From<m::HealthCheck> for v1::HealthCheck {
    fn from(h: m::HealthCheck) -> Self {
        Self {
            command: h.command,
            interval: h.interval,
            timeout: h.timeout,
            retries: h.retries,
            start_period: h.start_period,
        }
    }
}

impl From<v1::HealthCheck> for m::HealthCheck {
    fn from(h: v1::HealthCheck) -> Self {
        Self {
            command: h.command,
            interval: h.interval,
            timeout: h.timeout,
            retries: h.retries,
            start_period: h.start_period,
        }
    }
}

impl From<m::ContainerDependency> for v1::ContainerDependency {
    fn from(d: m::ContainerDependency) -> Self {
        Self {
            container_name: d.container_name,
            condition: v1::DependencyCondition::from(d.condition) as i32,
        }
    }
}

impl TryFrom<v1::ContainerDependency> for m::ContainerDependency {
    type Error = ConversionError;
    fn try_from(d: v1::ContainerDependency) -> Result<Self, ConversionError> {
        Ok(Self {
            container_name: d.container_name,
            condition: m::DependencyCondition::from_wire("dependsOn.condition", d.condition)?,
        })
    }
}

impl From<m::ContainerDefinition> for v1::ContainerDefinition {
    fn from(c: m::ContainerDefinition) -> Self {
        Self {
            name: c.name,
            image: c.image,
            command: c.command,
            entry_point: c.entry_point,
            environment: c.environment,
            working_directory: c.working_directory.unwrap_or_default(),
            essential: c.essential,
            stop_timeout: c.stop_timeout,
            cpu: c.cpu,
            memory: c.memory,
            health_check: c.health_check.map(Into::into),
            depends_on: all_to_wire(c.depends_on),
            init: Some(c.init),
            port_mappings: all_to_wire(c.port_mappings),
            secrets: c
                .secrets
                .into_iter()
                .map(|s| v1::SecretEnvironment {
                    name: s.name,
                    value_from: s.value_from.to_string(),
                })
                .collect(),
            secret_files: c
                .secret_files
                .into_iter()
                .map(|f| v1::SecretFile {
                    secret: f.secret,
                    path: f.path,
                })
                .collect(),
            repository_credentials: c
                .repository_credentials
                .map(|r| r.credentials_parameter)
                .unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            readonly_root_filesystem: c.readonly_root_filesystem,
            capabilities_add: c.linux_parameters.capabilities.add,
            capabilities_drop: c.linux_parameters.capabilities.drop,
            ulimits: c
                .ulimits
                .into_iter()
                .map(|u| v1::Ulimit {
                    name: u.name,
                    soft_limit: u.soft_limit,
                    hard_limit: u.hard_limit,
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::ContainerDefinition> for m::ContainerDefinition {
    type Error = ConversionError;
    fn try_from(c: v1::ContainerDefinition) -> Result<Self, ConversionError> {
        Ok(Self {
            depends_on: try_all(c.depends_on)?,
            name: c.name,
            image: c.image,
            command: c.command,
            entry_point: c.entry_point,
            environment: c.environment,
            working_directory: opt_str(c.working_directory),
            essential: c.essential,
            stop_timeout: c.stop_timeout,
            cpu: c.cpu,
            memory: c.memory,
            health_check: c.health_check.map(Into::into),
            init: c.init.unwrap_or(true),
            port_mappings: try_all(c.port_mappings)?,
            secrets: c
                .secrets
                .into_iter()
                .map(|s| {
                    Ok(m::SecretEnvironment {
                        value_from: s.value_from.parse()?,
                        name: s.name,
                    })
                })
                .collect::<Result<_, ConversionError>>()?,
            secret_files: c
                .secret_files
                .into_iter()
                .map(|f| m::SecretFile {
                    secret: f.secret,
                    path: f.path,
                })
                .collect(),
            repository_credentials: opt_str(c.repository_credentials).map(
                |credentials_parameter| m::RepositoryCredentials {
                    credentials_parameter,
                },
            ),
            user: opt_str(c.user),
            readonly_root_filesystem: c.readonly_root_filesystem,
            linux_parameters: m::LinuxParameters {
                capabilities: m::KernelCapabilities {
                    add: c.capabilities_add,
                    drop: c.capabilities_drop,
                },
            },
            ulimits: c
                .ulimits
                .into_iter()
                .map(|u| m::Ulimit {
                    name: u.name,
                    soft_limit: u.soft_limit,
                    hard_limit: u.hard_limit,
                })
                .collect(),
        })
    }
}

/// The size of `spec` encoded on the wire, in bytes (what limits a task definition's size).
pub fn encoded_len(spec: &m::TaskDefinitionSpec) -> usize {
    prost::Message::encoded_len(&v1::TaskDefinitionSpec::from(spec.clone()))
}

/// A `PutSecret` precondition: the secret must exist (`Some(true)`), must not (`Some(false)`),
/// or either (`None`).
pub fn secret_precondition(value: i32) -> Result<Option<bool>, ConversionError> {
    match v1::SecretPrecondition::try_from(value) {
        Ok(v1::SecretPrecondition::Absent) => Ok(Some(false)),
        Ok(v1::SecretPrecondition::Present) => Ok(Some(true)),
        Ok(v1::SecretPrecondition::Unspecified) => Ok(None),
        Err(_) => Err(ConversionError::UnknownEnum {
            field: "precondition",
            kind: "SecretPrecondition",
            value,
        }),
    }
}

impl From<m::TaskDefinitionSpec> for v1::TaskDefinitionSpec {
    fn from(s: m::TaskDefinitionSpec) -> Self {
        Self {
            family: s.family,
            cpu: s.cpu,
            memory: s.memory,
            containers: all_to_wire(s.containers),
            placement: placement_to_wire(s.placement),
            ephemeral_storage_gib: s.ephemeral_storage.map(|e| e.size_in_gib),
            labels: s.meta.labels,
            annotations: s.meta.annotations,
        }
    }
}

impl TryFrom<v1::TaskDefinitionSpec> for m::TaskDefinitionSpec {
    type Error = ConversionError;
    fn try_from(s: v1::TaskDefinitionSpec) -> Result<Self, ConversionError> {
        Ok(Self {
            family: s.family,
            cpu: s.cpu,
            memory: s.memory,
            containers: try_all(s.containers)?,
            placement: placement_from_wire(s.placement)?,
            ephemeral_storage: s
                .ephemeral_storage_gib
                .map(|size_in_gib| m::EphemeralStorage { size_in_gib }),
            meta: meta(s.labels, s.annotations),
        })
    }
}

impl From<m::TaskDefinition> for v1::TaskDefinition {
    fn from(d: m::TaskDefinition) -> Self {
        Self {
            namespace: d.namespace,
            family: d.family,
            revision: d.revision,
            status: v1::TaskDefinitionStatus::from(d.status) as i32,
            cpu: d.cpu,
            memory: d.memory,
            containers: all_to_wire(d.containers),
            registered_at: d.registered_at,
            placement: placement_to_wire(d.placement),
            ephemeral_storage_gib: d.ephemeral_storage.map(|e| e.size_in_gib),
            deregistered_at: d.deregistered_at,
            labels: d.meta.labels,
            annotations: d.meta.annotations,
        }
    }
}

impl TryFrom<v1::TaskDefinition> for m::TaskDefinition {
    type Error = ConversionError;
    fn try_from(d: v1::TaskDefinition) -> Result<Self, ConversionError> {
        Ok(Self {
            namespace: d.namespace,
            family: d.family,
            revision: d.revision,
            status: m::TaskDefinitionStatus::from_wire("status", d.status)?,
            cpu: d.cpu,
            memory: d.memory,
            containers: try_all(d.containers)?,
            registered_at: d.registered_at,
            placement: placement_from_wire(d.placement)?,
            ephemeral_storage: d
                .ephemeral_storage_gib
                .map(|size_in_gib| m::EphemeralStorage { size_in_gib }),
            meta: meta(d.labels, d.annotations),
            deregistered_at: d.deregistered_at,
        })
    }
}
