//! Placement: a task's strategies and constraints, and where a dry run would place tasks.

use berth_model as m;

use super::{invalid, ConversionError};
use crate::v1;

/// An empty spec is no message at all.
pub(super) fn placement_to_wire(p: m::PlacementSpec) -> Option<v1::PlacementSpec> {
    if p.is_empty() {
        return None;
    }
    Some(v1::PlacementSpec {
        strategy: p.strategy.into_iter().map(strategy_to_wire).collect(),
        constraints: p.constraints.into_iter().map(constraint_to_wire).collect(),
    })
}

fn strategy_to_wire(s: m::PlacementStrategy) -> v1::PlacementStrategy {
    let (r#type, field) = match s {
        m::PlacementStrategy::Binpack { field } => (
            "binpack",
            match field {
                m::BinpackField::Cpu => "cpu".to_owned(),
                m::BinpackField::Memory => "memory".to_owned(),
            },
        ),
        m::PlacementStrategy::Spread { field } => ("spread", field),
        m::PlacementStrategy::Random => ("random", String::new()),
    };
    v1::PlacementStrategy {
        r#type: r#type.to_owned(),
        field,
    }
}

fn constraint_to_wire(c: m::PlacementConstraint) -> v1::PlacementConstraint {
    let (r#type, expression) = match c {
        m::PlacementConstraint::DistinctInstance => ("distinctInstance", String::new()),
        m::PlacementConstraint::MemberOf { expression } => ("memberOf", expression),
    };
    v1::PlacementConstraint {
        r#type: r#type.to_owned(),
        expression,
    }
}

/// No message is the empty spec.
pub(super) fn placement_from_wire(
    p: Option<v1::PlacementSpec>,
) -> Result<m::PlacementSpec, ConversionError> {
    let Some(p) = p else {
        return Ok(m::PlacementSpec::default());
    };
    Ok(m::PlacementSpec {
        strategy: p
            .strategy
            .into_iter()
            .map(strategy_from_wire)
            .collect::<Result<_, _>>()?,
        constraints: p
            .constraints
            .into_iter()
            .map(constraint_from_wire)
            .collect::<Result<_, _>>()?,
    })
}

fn strategy_from_wire(s: v1::PlacementStrategy) -> Result<m::PlacementStrategy, ConversionError> {
    match (s.r#type.as_str(), s.field.as_str()) {
        ("binpack", "cpu" | "") => Ok(m::PlacementStrategy::Binpack {
            field: m::BinpackField::Cpu,
        }),
        ("binpack", "memory") => Ok(m::PlacementStrategy::Binpack {
            field: m::BinpackField::Memory,
        }),
        ("spread", f) => Ok(m::PlacementStrategy::Spread {
            field: f.to_owned(),
        }),
        ("random", _) => Ok(m::PlacementStrategy::Random),
        (t, f) => Err(invalid(
            "placement.strategy",
            format!(
                "unknown strategy {t:?} (field {f:?}); use binpack (cpu|memory), spread or random"
            ),
        )),
    }
}

fn constraint_from_wire(
    c: v1::PlacementConstraint,
) -> Result<m::PlacementConstraint, ConversionError> {
    match c.r#type.as_str() {
        "distinctInstance" => Ok(m::PlacementConstraint::DistinctInstance),
        "memberOf" => Ok(m::PlacementConstraint::MemberOf {
            expression: c.expression,
        }),
        t => Err(invalid(
            "placement.constraints",
            format!("unknown constraint {t:?}; use distinctInstance or memberOf"),
        )),
    }
}

/// A task that fits nowhere has no node and a reason.
impl From<m::PlannedTask> for v1::PlannedTask {
    fn from(p: m::PlannedTask) -> Self {
        match p {
            m::PlannedTask::Node(node) => Self {
                node,
                reason: String::new(),
            },
            m::PlannedTask::Unplaceable { reason } => Self {
                node: String::new(),
                reason,
            },
        }
    }
}

impl From<v1::PlannedTask> for m::PlannedTask {
    fn from(p: v1::PlannedTask) -> Self {
        if p.node.is_empty() {
            Self::Unplaceable { reason: p.reason }
        } else {
            Self::Node(p.node)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_round_trips_and_empty_is_absent() {
        let spec = m::PlacementSpec {
            strategy: vec![
                m::PlacementStrategy::Spread {
                    field: "attribute:zone".into(),
                },
                m::PlacementStrategy::Binpack {
                    field: m::BinpackField::Memory,
                },
                m::PlacementStrategy::Binpack {
                    field: m::BinpackField::Cpu,
                },
                m::PlacementStrategy::Random,
            ],
            constraints: vec![
                m::PlacementConstraint::DistinctInstance,
                m::PlacementConstraint::MemberOf {
                    expression: "attribute:disk == ssd".into(),
                },
            ],
        };
        let wire = placement_to_wire(spec.clone());
        assert_eq!(placement_from_wire(wire).ok(), Some(spec));
        assert_eq!(placement_to_wire(m::PlacementSpec::default()), None);
        assert_eq!(
            placement_from_wire(None).ok(),
            Some(m::PlacementSpec::default())
        );
    }

    #[test]
    fn unknown_strategies_and_constraints_are_errors() {
        let strategy = |t: &str, f: &str| {
            placement_from_wire(Some(v1::PlacementSpec {
                strategy: vec![v1::PlacementStrategy {
                    r#type: t.into(),
                    field: f.into(),
                }],
                constraints: vec![],
            }))
        };
        assert_eq!(
            strategy("binpack", "").ok().map(|p| p.strategy),
            Some(vec![m::PlacementStrategy::Binpack {
                field: m::BinpackField::Cpu
            }])
        );
        assert_eq!(
            strategy("binpack", "disk").unwrap_err().to_string(),
            "placement.strategy: unknown strategy \"binpack\" (field \"disk\"); use binpack (cpu|memory), spread or random"
        );
        let constraint = placement_from_wire(Some(v1::PlacementSpec {
            strategy: vec![],
            constraints: vec![v1::PlacementConstraint {
                r#type: "near".into(),
                expression: String::new(),
            }],
        }));
        assert_eq!(
            constraint.unwrap_err().to_string(),
            "placement.constraints: unknown constraint \"near\"; use distinctInstance or memberOf"
        );
    }

    #[test]
    fn planned_tasks_carry_a_node_or_a_reason() {
        let placed = v1::PlannedTask::from(m::PlannedTask::Node("node-1".into()));
        assert_eq!(
            placed,
            v1::PlannedTask {
                node: "node-1".into(),
                reason: String::new(),
            }
        );
        let reason = "no node has 4096 MiB free (2 nodes: 2 memory)".to_owned();
        let unplaceable = v1::PlannedTask::from(m::PlannedTask::Unplaceable {
            reason: reason.clone(),
        });
        assert_eq!(
            unplaceable,
            v1::PlannedTask {
                node: String::new(),
                reason: reason.clone(),
            }
        );
        assert_eq!(
            m::PlannedTask::from(placed),
            m::PlannedTask::Node("node-1".into())
        );
        assert_eq!(
            m::PlannedTask::from(unplaceable),
            m::PlannedTask::Unplaceable { reason }
        );
    }
}
