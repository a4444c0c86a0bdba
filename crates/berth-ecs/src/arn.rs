//! ECS's resource names for berth's objects, built and read back: a cluster is a namespace,
//! a container instance is a node. `arn:aws:ecs:REGION:ACCOUNT:KIND/…` with the region the
//! request was signed for and the cluster's configured account ID, so what one call answers,
//! the next accepts. ECS also takes short forms where it takes an ARN (a cluster's name, a
//! task's ID, `FAMILY:REVISION`): [`Arn::parse`] reads those too, in the cluster given.

use std::fmt;

/// One resource of ECS's kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Cluster {
        name: String,
    },
    Task {
        cluster: String,
        id: String,
    },
    /// No revision: the family's latest ACTIVE one (ECS's `FAMILY` short form).
    TaskDefinition {
        family: String,
        revision: Option<u32>,
    },
    Service {
        cluster: String,
        name: String,
    },
    ContainerInstance {
        cluster: String,
        id: String,
    },
}

/// A resource with the region and account of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn {
    pub region: String,
    pub account: String,
    pub resource: Resource,
}

/// What kind of resource a parameter names, for reading short forms and for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cluster,
    Task,
    TaskDefinition,
    Service,
    ContainerInstance,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Task => "task",
            Kind::TaskDefinition => "task-definition",
            Kind::Service => "service",
            Kind::ContainerInstance => "container-instance",
        }
    }
}

/// Why a name is not one of the kind asked for. The message names the parameter's forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {} ARN or name: use {forms}", kind.word())]
pub struct ArnError {
    pub value: String,
    pub kind: Kind,
    forms: &'static str,
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "arn:aws:ecs:{}:{}:", self.region, self.account)?;
        match &self.resource {
            Resource::Cluster { name } => write!(f, "cluster/{name}"),
            Resource::Task { cluster, id } => write!(f, "task/{cluster}/{id}"),
            Resource::TaskDefinition {
                family,
                revision: Some(revision),
            } => write!(f, "task-definition/{family}:{revision}"),
            // ECS has no ARN for "the latest": the family's name is what names it.
            Resource::TaskDefinition {
                family,
                revision: None,
            } => write!(f, "task-definition/{family}"),
            Resource::Service { cluster, name } => write!(f, "service/{cluster}/{name}"),
            Resource::ContainerInstance { cluster, id } => {
                write!(f, "container-instance/{cluster}/{id}")
            }
        }
    }
}

/// The region and account every ARN of one answer is built with: the region the request
/// was signed for, the cluster's configured account ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub region: String,
    pub account: String,
}

impl Names {
    pub fn new(region: impl Into<String>, account: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            account: account.into(),
        }
    }

    /// The ARN of `resource`.
    pub fn arn(&self, resource: Resource) -> String {
        Arn {
            region: self.region.clone(),
            account: self.account.clone(),
            resource,
        }
        .to_string()
    }

    pub fn cluster(&self, name: &str) -> String {
        self.arn(Resource::Cluster { name: name.into() })
    }

    pub fn task(&self, cluster: &str, id: &str) -> String {
        self.arn(Resource::Task {
            cluster: cluster.into(),
            id: id.into(),
        })
    }

    pub fn task_definition(&self, family: &str, revision: u32) -> String {
        self.arn(Resource::TaskDefinition {
            family: family.into(),
            revision: Some(revision),
        })
    }

    pub fn service(&self, cluster: &str, name: &str) -> String {
        self.arn(Resource::Service {
            cluster: cluster.into(),
            name: name.into(),
        })
    }

    pub fn container_instance(&self, cluster: &str, node: &str) -> String {
        self.arn(Resource::ContainerInstance {
            cluster: cluster.into(),
            id: node.into(),
        })
    }
}

impl Arn {
    /// Reads `value`, a full ARN or ECS's short form of `kind` (a bare name or ID, in
    /// `cluster`: the request's, `default` when it named none). An ARN of another kind is an
    /// error. A full ARN names its own cluster, which may not be the request's: whoever acts
    /// on the resource checks the caller's rights on the resource's cluster. The ARN's
    /// partition, region and account are not checked.
    pub fn parse(value: &str, kind: Kind, cluster: &str) -> Result<Resource, ArnError> {
        let err = || {
            ArnError {
            value: value.to_owned(),
            kind,
            forms: match kind {
                Kind::Cluster => "NAME or arn:aws:ecs:REGION:ACCOUNT:cluster/NAME",
                Kind::Task => "ID or arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID",
                Kind::TaskDefinition => {
                    "FAMILY, FAMILY:REVISION or arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:REVISION"
                }
                Kind::Service => "NAME or arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/NAME",
                Kind::ContainerInstance => {
                    "NODE or arn:aws:ecs:REGION:ACCOUNT:container-instance/CLUSTER/NODE"
                }
            },
        }
        };
        let resource = match value.strip_prefix("arn:") {
            Some(rest) => {
                // aws:ecs:REGION:ACCOUNT:RESOURCE (the partition may be aws-cn and the like).
                let parts: Vec<&str> = rest.splitn(5, ':').collect();
                let [_partition, "ecs", _region, _account, resource] = parts.as_slice() else {
                    return Err(err());
                };
                let (word, path) = resource.split_once('/').ok_or_else(err)?;
                if word != kind.word() {
                    return Err(err());
                }
                path
            }
            None => value,
        };
        let full = value.starts_with("arn:");
        let name = |s: &str| (!s.is_empty() && !s.contains('/')).then(|| s.to_owned());
        let in_cluster = |path: &str| -> Option<(String, String)> {
            match path.split_once('/') {
                // Only a full ARN names a cluster.
                Some((c, rest)) if full => Some((name(c)?, name(rest)?)),
                Some(_) => None,
                // An ARN of the old form (no cluster) or a short form: the request's cluster.
                None => Some((cluster.to_owned(), name(path)?)),
            }
        };
        let parsed = match kind {
            Kind::Cluster => name(resource).map(|name| Resource::Cluster { name }),
            Kind::Task => in_cluster(resource).map(|(cluster, id)| Resource::Task { cluster, id }),
            Kind::Service => {
                in_cluster(resource).map(|(cluster, name)| Resource::Service { cluster, name })
            }
            Kind::ContainerInstance => in_cluster(resource)
                .map(|(cluster, id)| Resource::ContainerInstance { cluster, id }),
            Kind::TaskDefinition => {
                let (family, revision) = match resource.rsplit_once(':') {
                    Some((f, r)) => (f, Some(r.parse::<u32>().ok().filter(|r| *r > 0))),
                    None if full => return Err(err()),
                    None => (resource, None),
                };
                match (name(family), revision) {
                    (Some(family), Some(Some(revision))) => Some(Resource::TaskDefinition {
                        family,
                        revision: Some(revision),
                    }),
                    // A family alone: its latest ACTIVE revision, which only the caller knows.
                    (Some(family), None) => Some(Resource::TaskDefinition {
                        family,
                        revision: None,
                    }),
                    _ => None,
                }
            }
        };
        parsed.ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(resource: Resource) -> String {
        Arn {
            region: "us-east-1".into(),
            account: "000000000000".into(),
            resource,
        }
        .to_string()
    }

    #[test]
    fn every_kind_round_trips_through_its_arn() {
        let cases = [
            (
                Kind::Cluster,
                Resource::Cluster {
                    name: "team-a".into(),
                },
                "cluster/team-a",
            ),
            (
                Kind::Task,
                Resource::Task {
                    cluster: "team-a".into(),
                    id: "0b6c9d4e-7f1a-4c2b-9e8d-5a3f2e1d0c9b".into(),
                },
                "task/team-a/0b6c9d4e-7f1a-4c2b-9e8d-5a3f2e1d0c9b",
            ),
            (
                Kind::TaskDefinition,
                Resource::TaskDefinition {
                    family: "web".into(),
                    revision: Some(3),
                },
                "task-definition/web:3",
            ),
            (
                Kind::Service,
                Resource::Service {
                    cluster: "default".into(),
                    name: "api".into(),
                },
                "service/default/api",
            ),
            (
                Kind::ContainerInstance,
                Resource::ContainerInstance {
                    cluster: "default".into(),
                    id: "node-1".into(),
                },
                "container-instance/default/node-1",
            ),
        ];
        for (kind, resource, tail) in cases {
            let text = arn(resource.clone());
            assert_eq!(text, format!("arn:aws:ecs:us-east-1:000000000000:{tail}"));
            assert_eq!(Arn::parse(&text, kind, "elsewhere"), Ok(resource));
        }
    }

    #[test]
    fn short_forms_are_read_in_the_requests_cluster() {
        assert_eq!(
            Arn::parse("abc", Kind::Task, "team-a"),
            Ok(Resource::Task {
                cluster: "team-a".into(),
                id: "abc".into()
            })
        );
        assert_eq!(
            Arn::parse("web", Kind::TaskDefinition, "default"),
            Ok(Resource::TaskDefinition {
                family: "web".into(),
                revision: None
            }),
            "a family alone means its latest"
        );
        assert_eq!(
            Arn::parse("web:7", Kind::TaskDefinition, "default"),
            Ok(Resource::TaskDefinition {
                family: "web".into(),
                revision: Some(7)
            })
        );
        // ECS's older task ARNs have no cluster.
        assert_eq!(
            Arn::parse("arn:aws:ecs:eu-west-1:1:task/abc", Kind::Task, "b"),
            Ok(Resource::Task {
                cluster: "b".into(),
                id: "abc".into()
            })
        );
    }

    #[test]
    fn a_name_of_another_kind_or_form_is_refused_naming_the_forms() {
        for (value, kind) in [
            ("arn:aws:ecs:us-east-1:1:service/default/api", Kind::Task),
            ("arn:aws:s3:::bucket", Kind::Cluster),
            ("web:0", Kind::TaskDefinition),
            ("web:x", Kind::TaskDefinition),
            (
                "arn:aws:ecs:us-east-1:1:task-definition/web",
                Kind::TaskDefinition,
            ),
            ("", Kind::Service),
            ("a/b/c", Kind::Task),
            // A short form is a bare ID: it cannot name another cluster.
            ("other-team/abc", Kind::Task),
            ("other-team/api", Kind::Service),
        ] {
            let e = Arn::parse(value, kind, "default").expect_err(value);
            assert!(e.to_string().contains(" ARN or name: use "), "{e}");
        }
    }
}
