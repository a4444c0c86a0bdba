//! The metering ledger: what tasks requested (CPU and memory times their billable time, from
//! the start of the image pull to the stop, to the millisecond) and what they used (from their
//! nodes' samples), accounted by the leader in closed buckets (a minute each) that are written
//! once, in order: a bucket's rows per namespace, service and task definition, each task's own
//! figures, and running totals per namespace and service.

use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// The length of a ledger bucket unless a server is told otherwise (`--usage-bucket`).
pub const USAGE_BUCKET_MS: u64 = 60 * 1000;

/// Figures accrued over a span. Requested figures are exact (integers of CPU units or MiB
/// times milliseconds); used figures come from samples and are as good as the samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accrued {
    /// Billable milliseconds (summed over tasks).
    pub task_ms: u64,
    /// Requested CPU units (1024 per vCPU) × billable milliseconds.
    pub cpu_unit_ms: u64,
    /// Requested MiB × billable milliseconds.
    pub memory_mib_ms: u64,
    /// Used CPU units × milliseconds, from samples.
    #[serde(default)]
    pub used_cpu_unit_ms: u64,
    /// Used memory in MiB × milliseconds, from samples (divided by `sampled_ms`: the average).
    #[serde(default)]
    pub used_memory_mib_ms: u64,
    /// Milliseconds the samples cover.
    #[serde(default)]
    pub sampled_ms: u64,
    /// The most memory one sample saw, in bytes (the peak of one task; of a row, the highest
    /// of its tasks').
    #[serde(default)]
    pub memory_peak_bytes: u64,
}

impl AddAssign for Accrued {
    fn add_assign(&mut self, other: Self) {
        self.task_ms = self.task_ms.saturating_add(other.task_ms);
        self.cpu_unit_ms = self.cpu_unit_ms.saturating_add(other.cpu_unit_ms);
        self.memory_mib_ms = self.memory_mib_ms.saturating_add(other.memory_mib_ms);
        self.used_cpu_unit_ms = self.used_cpu_unit_ms.saturating_add(other.used_cpu_unit_ms);
        self.used_memory_mib_ms = self
            .used_memory_mib_ms
            .saturating_add(other.used_memory_mib_ms);
        self.sampled_ms = self.sampled_ms.saturating_add(other.sampled_ms);
        self.memory_peak_bytes = self.memory_peak_bytes.max(other.memory_peak_bytes);
    }
}

impl Accrued {
    /// What `ms` billable milliseconds of a task requesting `cpu` units and `memory` MiB add.
    pub fn requested(cpu: u32, memory: u32, ms: u64) -> Self {
        Self {
            task_ms: ms,
            cpu_unit_ms: u64::from(cpu).saturating_mul(ms),
            memory_mib_ms: u64::from(memory).saturating_mul(ms),
            ..Self::default()
        }
    }

    /// Requested vCPU-seconds.
    pub fn vcpu_seconds(&self) -> f64 {
        self.cpu_unit_ms as f64 / f64::from(crate::CPU_UNITS_PER_VCPU) / 1000.0
    }

    /// Requested GB-seconds (a GB of memory being 1,024 MiB, as Fargate counts it).
    pub fn gb_seconds(&self) -> f64 {
        self.memory_mib_ms as f64 / 1024.0 / 1000.0
    }

    /// Used vCPU-seconds.
    pub fn used_vcpu_seconds(&self) -> f64 {
        self.used_cpu_unit_ms as f64 / f64::from(crate::CPU_UNITS_PER_VCPU) / 1000.0
    }

    /// Average memory used while sampled, in MiB; none without samples.
    pub fn used_memory_mib(&self) -> Option<f64> {
        (self.sampled_ms > 0).then(|| self.used_memory_mib_ms as f64 / self.sampled_ms as f64)
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// What one group of tasks (namespace, service, task definition revision) accrued in one
/// bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRow {
    pub namespace: String,
    /// The service whose tasks these are; none for tasks run on their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `family:revision`.
    pub task_definition: String,
    /// How many tasks accrued something in the bucket.
    pub tasks: u32,
    #[serde(flatten)]
    pub accrued: Accrued,
}

/// One closed bucket of the ledger: `[start, end)`, rows sorted by namespace, service, task
/// definition. Only buckets in which something accrued are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerBucket {
    #[serde(with = "crate::time::rfc3339")]
    pub start: Timestamp,
    #[serde(with = "crate::time::rfc3339")]
    pub end: Timestamp,
    pub rows: Vec<LedgerRow>,
}

/// What one task accrued in the closed buckets so far (while the task is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskUsage {
    pub task_id: String,
    pub namespace: String,
    /// The end of the last bucket that counted it.
    #[serde(with = "crate::time::rfc3339")]
    pub accounted_to: Timestamp,
    #[serde(flatten)]
    pub accrued: Accrued,
}

/// Running totals of one namespace and service (none: tasks run on their own) since the ledger
/// began: what the Prometheus counters show. Kept after the service and its buckets are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerTotal {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(flatten)]
    pub accrued: Accrued,
}

/// Where the ledger stands: every bucket before `accounted_to` is closed (written once, by the
/// leader, in order), the time after it is still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// When the first bucket began.
    #[serde(with = "crate::time::rfc3339")]
    pub since: Timestamp,
    #[serde(with = "crate::time::rfc3339")]
    pub accounted_to: Timestamp,
    /// Sorted by namespace and service.
    #[serde(default)]
    pub totals: Vec<LedgerTotal>,
}

/// Published prices, in US dollars, for an estimate of what usage would have cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub vcpu_hour: f64,
    pub gb_hour: f64,
}

impl Rates {
    /// AWS Fargate, Linux/x86, us-east-1, on demand (per vCPU-hour and per GB-hour).
    pub const FARGATE: Rates = Rates {
        vcpu_hour: 0.040_48,
        gb_hour: 0.004_445,
    };

    /// What `accrued` would cost at these rates (requested, not used: billing counts what
    /// was reserved).
    pub fn cost(&self, accrued: &Accrued) -> f64 {
        accrued.vcpu_seconds() / 3600.0 * self.vcpu_hour
            + accrued.gb_seconds() / 3600.0 * self.gb_hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_add_and_convert() {
        // A quarter vCPU and 512 MiB for one hour.
        let mut a = Accrued::requested(256, 512, 3_600_000);
        assert_eq!(a.vcpu_seconds(), 900.0);
        assert_eq!(a.gb_seconds(), 1800.0);
        let cost = Rates::FARGATE.cost(&a);
        assert!(
            (cost - (0.25 * 0.040_48 + 0.5 * 0.004_445)).abs() < 1e-12,
            "{cost}"
        );
        a += Accrued {
            used_cpu_unit_ms: 10,
            used_memory_mib_ms: 300,
            sampled_ms: 3,
            memory_peak_bytes: 7,
            ..Accrued::requested(1, 1, 1)
        };
        assert_eq!(a.task_ms, 3_600_001);
        assert_eq!(a.cpu_unit_ms, 256 * 3_600_000 + 1);
        assert_eq!(a.used_memory_mib(), Some(100.0));
        assert_eq!(a.memory_peak_bytes, 7);
        assert_eq!(Accrued::default().used_memory_mib(), None);
        assert!(Accrued::default().is_zero());
    }

    #[test]
    fn rows_serialise_flat_with_camel_case_names() {
        let row = LedgerRow {
            namespace: "default".into(),
            service: Some("web".into()),
            task_definition: "web:3".into(),
            tasks: 2,
            accrued: Accrued::requested(512, 1024, 1000),
        };
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["cpuUnitMs"], 512_000);
        assert_eq!(json["taskDefinition"], "web:3");
        let back: LedgerRow = serde_json::from_value(json).unwrap();
        assert_eq!(back, row);
    }
}
