//! Where tasks may run and how nodes are ranked (ECS placement constraints and strategies).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Ranking rules, applied in order (ties go to the next). Binpack on CPU when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strategy: Vec<PlacementStrategy>,
    /// Rules a node must satisfy to run the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<PlacementConstraint>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum PlacementStrategy {
    /// Fill nodes up: prefer the node with the least of `field` left.
    Binpack { field: BinpackField },
    /// Spread a group's tasks evenly over `node` or the values of `attribute:NAME`.
    Spread { field: String },
    /// Any feasible node, chosen by a hash of the task ID.
    Random,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinpackField {
    Cpu,
    Memory,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum PlacementConstraint {
    /// No two tasks of the same group on one node.
    DistinctInstance,
    /// Only nodes whose attributes match `expression`, e.g. `attribute:zone in [a, b]`.
    MemberOf { expression: String },
}

impl PlacementSpec {
    pub fn is_empty(&self) -> bool {
        self.strategy.is_empty() && self.constraints.is_empty()
    }

    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        for (i, s) in self.strategy.iter().enumerate() {
            if let PlacementStrategy::Spread { field: f } = s {
                if f != "node" && f.strip_prefix("attribute:").is_none_or(str::is_empty) {
                    return Err(ValidationError::new(
                        format!("{field}.strategy[{i}].field"),
                        format!("{f:?} is not `node` or `attribute:NAME`"),
                    ));
                }
            }
        }
        for (i, c) in self.constraints.iter().enumerate() {
            if let PlacementConstraint::MemberOf { expression } = c {
                expression.parse::<Expression>().map_err(|e| {
                    ValidationError::new(format!("{field}.constraints[{i}].expression"), e)
                })?;
            }
        }
        Ok(())
    }
}

/// `attribute:NAME OP VALUE` with OP one of `==`, `!=`, `in [a, b]`, `not_in [a, b]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    pub attribute: String,
    pub negated: bool,
    pub values: Vec<String>,
}

impl Expression {
    /// Whether a node with `attributes` matches. A missing attribute matches only negations.
    pub fn matches(&self, attributes: &BTreeMap<String, String>) -> bool {
        let hit = attributes
            .get(&self.attribute)
            .is_some_and(|v| self.values.contains(v));
        hit != self.negated
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.negated { "not_in" } else { "in" };
        write!(
            f,
            "attribute:{} {op} [{}]",
            self.attribute,
            self.values.join(", ")
        )
    }
}

impl FromStr for Expression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let hint = || {
            format!(
                "{text:?}: write `attribute:NAME == VALUE`, `!=`, `in [A, B]` or `not_in [A, B]`"
            )
        };
        let rest = text.trim().strip_prefix("attribute:").ok_or_else(hint)?;
        let (attribute, rest) = rest.split_once(char::is_whitespace).ok_or_else(hint)?;
        let rest = rest.trim();
        let (negated, values) = if let Some(v) = rest.strip_prefix("==") {
            (false, vec![v.trim().to_owned()])
        } else if let Some(v) = rest.strip_prefix("!=") {
            (true, vec![v.trim().to_owned()])
        } else {
            let (negated, list) = match (rest.strip_prefix("not_in"), rest.strip_prefix("in")) {
                (Some(l), _) => (true, l),
                (None, Some(l)) => (false, l),
                _ => return Err(hint()),
            };
            let list = list
                .trim()
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .ok_or_else(hint)?;
            (
                negated,
                list.split(',').map(|v| v.trim().to_owned()).collect(),
            )
        };
        if attribute.is_empty() || values.iter().any(String::is_empty) {
            return Err(hint());
        }
        Ok(Self {
            attribute: attribute.to_owned(),
            negated,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions() {
        let attrs = BTreeMap::from([
            ("zone".to_owned(), "a".to_owned()),
            ("disk".to_owned(), "ssd".to_owned()),
        ]);
        let check = |e: &str| e.parse::<Expression>().map(|x| x.matches(&attrs));
        assert_eq!(check("attribute:zone in [a, b]"), Ok(true));
        assert_eq!(check("attribute:zone not_in [a]"), Ok(false));
        assert_eq!(check("attribute:disk == ssd"), Ok(true));
        assert_eq!(check("attribute:disk != ssd"), Ok(false));
        assert_eq!(check("attribute:gpu == yes"), Ok(false));
        assert_eq!(check("attribute:gpu != yes"), Ok(true));
        assert!(check("zone == a")
            .unwrap_err()
            .contains("write `attribute:NAME == VALUE`"));
        assert!(check("attribute:zone in a, b").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let spec = PlacementSpec {
            strategy: vec![PlacementStrategy::Spread {
                field: "zone".into(),
            }],
            constraints: vec![],
        };
        assert_eq!(
            spec.validate("placement").unwrap_err().to_string(),
            "placement.strategy[0].field: \"zone\" is not `node` or `attribute:NAME`"
        );
    }
}
