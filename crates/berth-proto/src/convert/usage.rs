//! The metering ledger's figures.

use berth_model as m;

use crate::v1;

impl From<m::Accrued> for v1::UsageFigures {
    fn from(a: m::Accrued) -> Self {
        Self {
            task_ms: a.task_ms,
            cpu_unit_ms: a.cpu_unit_ms,
            memory_mib_ms: a.memory_mib_ms,
            used_cpu_unit_ms: a.used_cpu_unit_ms,
            used_memory_mib_ms: a.used_memory_mib_ms,
            sampled_ms: a.sampled_ms,
            memory_peak_bytes: a.memory_peak_bytes,
        }
    }
}

impl From<v1::UsageFigures> for m::Accrued {
    fn from(f: v1::UsageFigures) -> Self {
        Self {
            task_ms: f.task_ms,
            cpu_unit_ms: f.cpu_unit_ms,
            memory_mib_ms: f.memory_mib_ms,
            used_cpu_unit_ms: f.used_cpu_unit_ms,
            used_memory_mib_ms: f.used_memory_mib_ms,
            sampled_ms: f.sampled_ms,
            memory_peak_bytes: f.memory_peak_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip() {
        let a = m::Accrued {
            used_cpu_unit_ms: 7,
            used_memory_mib_ms: 8,
            sampled_ms: 9,
            memory_peak_bytes: 10,
            ..m::Accrued::requested(256, 512, 1000)
        };
        assert_eq!(m::Accrued::from(v1::UsageFigures::from(a)), a);
    }
}
