//! Target-tracking autoscaling as a pure function: a policy, a window of metric samples (the
//! tasks' usage, the ingresses' requests), the current count, the last scaling times and the
//! clock in; a new desired count (with the reason, quoting the numbers) or nothing out.
//!
//! Scale-out is fast and proportional (desired = ceil(running × value / target)); scale-in is
//! slow and stepwise (at most a tenth of the tasks, at least one, per action). A tolerance
//! band of ±10% around the target keeps a noisy plateau from flapping. A service with
//! `scaleToZero` goes to zero only when no request came for `idleAfter` (the stepwise
//! scale-in stops at one task), and wakes when requests wait for it.

use berth_model::{Autoscaling, MetricValue, ScalingMetric, Timestamp};

/// Samples older than this (before `now`) do not count.
pub const WINDOW_MS: u64 = 20_000;
/// A scale-in needs low samples spanning at least this long.
pub const SCALE_IN_EVIDENCE_MS: u64 = 15_000;
/// No change while every metric is within this fraction of its target.
pub const TOLERANCE: f64 = 0.1;
/// An ingress whose latest report is older than this (before `now`) no longer counts: it
/// stopped, or was replaced (a restarted ingress reports under the same source).
pub const STALE_SOURCE_MS: u64 = 3_000;

/// One task's usage at one moment, in percent of its reservation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    pub cpu_percent: f64,
    pub memory_percent: f64,
}

/// What one ingress saw of a service, as it reported it at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestSample {
    pub at: Timestamp,
    /// Which ingress reported (any number that stays the same for one ingress).
    pub source: u64,
    /// Requests per second since that ingress's previous report.
    pub rate: f64,
    /// Requests in flight there (forwarded or held for a wake) at `at`.
    pub in_flight: f64,
}

/// What the autoscaler knows about one service now.
#[derive(Debug, Clone)]
pub struct ScalingInput<'a> {
    pub policy: &'a Autoscaling,
    /// Samples of the service's RUNNING tasks (any order).
    pub samples: &'a [Sample],
    /// The ingresses' reports about the service (any order).
    pub requests: &'a [RequestSample],
    /// The last sign of use: the latest request through an ingress, scale-out, deployment or
    /// the service's creation, whichever is latest. `scaleToZero` counts its idle time from
    /// here.
    pub last_activity_at: Timestamp,
    /// The desired count now.
    pub desired: u32,
    /// RUNNING tasks now.
    pub running: u32,
    pub last_scale_out_at: Timestamp,
    pub last_scale_in_at: Timestamp,
    /// How many more tasks of this service the cluster can place now.
    pub room: u32,
    pub now: Timestamp,
    /// When the leader deciding began to lead: a cooldown that began earlier (or was stamped
    /// ahead by another leader's clock) counts from then.
    pub counting_from: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub desired: u32,
    pub direction: Direction,
    /// A sentence for the service's events, with the metric values and the rule that fired.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

/// Each tracked metric over the samples taken in `from..=now`, with its target: the tasks'
/// average utilization, or the ingresses' requests (each ingress's average over the window,
/// summed) divided among `running` tasks (at least one). A metric without samples in the
/// window is left out.
pub fn metric_values(
    policy: &Autoscaling,
    samples: &[Sample],
    requests: &[RequestSample],
    running: u32,
    from: Timestamp,
    now: Timestamp,
) -> Vec<MetricValue> {
    let recent: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= now)
        .collect();
    let load = RequestLoad::over(requests, from, now);
    policy
        .target_tracking
        .iter()
        .filter_map(|t| {
            let value = match t.metric {
                ScalingMetric::CpuUtilization | ScalingMetric::MemoryUtilization => {
                    if recent.is_empty() {
                        return None;
                    }
                    let sum: f64 = recent
                        .iter()
                        .map(|s| match t.metric {
                            ScalingMetric::MemoryUtilization => s.memory_percent,
                            _ => s.cpu_percent,
                        })
                        .sum();
                    sum / recent.len() as f64
                }
                ScalingMetric::RequestsPerTask => load?.rate / f64::from(running.max(1)),
                ScalingMetric::ConcurrencyPerTask => load?.in_flight / f64::from(running.max(1)),
            };
            Some(MetricValue {
                metric: t.metric,
                value,
                target: t.target,
            })
        })
        .collect()
}

/// The requests to a service in a window, over every ingress that reported in it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RequestLoad {
    /// Requests per second.
    rate: f64,
    in_flight: f64,
}

impl RequestLoad {
    /// Each ingress's reports in `from..=now` averaged, then summed over the ingresses still
    /// reporting (latest report within [`STALE_SOURCE_MS`]); `None` without such reports.
    fn over(requests: &[RequestSample], from: Timestamp, now: Timestamp) -> Option<Self> {
        // source -> (rate sum, in-flight sum, reports, latest)
        let mut by_source: std::collections::BTreeMap<u64, (f64, f64, u32, Timestamp)> =
            Default::default();
        for r in requests.iter().filter(|r| r.at >= from && r.at <= now) {
            let e = by_source.entry(r.source).or_default();
            e.0 += r.rate;
            e.1 += r.in_flight;
            e.2 += 1;
            e.3 = e.3.max(r.at);
        }
        let live: Vec<_> = by_source
            .values()
            .filter(|(_, _, _, latest)| latest + STALE_SOURCE_MS >= now)
            .collect();
        if live.is_empty() {
            return None;
        }
        let (rate, in_flight) = live
            .iter()
            .fold((0.0, 0.0), |(rate, in_flight), (r, f, n, _)| {
                (rate + r / f64::from(*n), in_flight + f / f64::from(*n))
            });
        Some(Self { rate, in_flight })
    }
}

fn describe(values: &[MetricValue]) -> String {
    values
        .iter()
        .map(|v| {
            format!(
                "{} {} (target {})",
                v.metric,
                v.metric.format(v.value),
                v.metric.format_target(v.target)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a cooldown of `secs` after an action at `last` (0: never) still runs at `now`, for
/// a leader counting from `counting_from` ([`crate::service::elapsed`]).
fn cooling(last: Timestamp, secs: u32, now: Timestamp, counting_from: Timestamp) -> bool {
    last > 0 && crate::service::elapsed(now, counting_from, last) < u64::from(secs) * 1000
}

/// Decides whether to change the desired count.
pub fn decide(input: &ScalingInput<'_>) -> Option<Scaling> {
    if let Some(back_inside) = clamp(input) {
        return Some(back_inside);
    }
    // The window, but nothing from before the last change: the load was spread differently.
    let from = input
        .now
        .saturating_sub(WINDOW_MS)
        .max(input.last_scale_out_at + 1)
        .max(input.last_scale_in_at + 1);
    let values = metric_values(
        input.policy,
        input.samples,
        input.requests,
        input.running,
        from,
        input.now,
    );
    if input.desired == 0 {
        return wake(input, from);
    }
    if let Some(zero) = to_zero(input, &values) {
        return Some(zero);
    }
    if values.is_empty() || input.running == 0 {
        return None;
    }
    let proposals = proposals(input, &values);
    // Out when any metric wants more; in only when every metric wants fewer.
    let out = proposals
        .iter()
        .filter(|(w, _)| *w > input.desired)
        .max_by_key(|(w, _)| *w);
    match out {
        Some((wanted, rule)) => scale_out(input, *wanted, rule, &values),
        None => scale_in(input, &proposals, from, &values),
    }
}

/// At zero: one task as soon as an ingress reports requests for the service (held while it
/// wakes). The ingress asks the leader for that task at once; this is the round's backstop.
fn wake(input: &ScalingInput<'_>, from: Timestamp) -> Option<Scaling> {
    input.policy.scale_to_zero?;
    let load = RequestLoad::over(input.requests, from, input.now)?;
    if load.in_flight <= 0.0 && load.rate <= 0.0 {
        return None;
    }
    Some(Scaling {
        desired: 1,
        direction: Direction::Out,
        reason: format!(
            "woke 0 -> 1: requests reached the ingresses ({:.1} req/s, {:.0} in flight)",
            load.rate, load.in_flight
        ),
    })
}

/// To zero when nothing used the service for `scaleToZero.idleAfter` and no metric asks for
/// more tasks than run.
fn to_zero(input: &ScalingInput<'_>, values: &[MetricValue]) -> Option<Scaling> {
    let z = input.policy.scale_to_zero?;
    let idle = crate::service::elapsed(input.now, input.counting_from, input.last_activity_at);
    if idle < u64::from(z.idle_after) * 1000 {
        return None;
    }
    if proposals(input, values)
        .iter()
        .any(|(wanted, _)| *wanted > input.desired)
    {
        return None;
    }
    Some(Scaling {
        desired: 0,
        direction: Direction::In,
        reason: format!(
            "scaled to zero {} -> 0: no request through any ingress for {}s (scaleToZero.idleAfter {}s)",
            input.desired,
            idle / 1000,
            z.idle_after
        ),
    })
}

/// Outside min..max (a new policy, a manual scale): back inside at once.
fn clamp(input: &ScalingInput<'_>) -> Option<Scaling> {
    let p = input.policy;
    let clamped = p.clamp(input.desired);
    if clamped == input.desired {
        return None;
    }
    let direction = if clamped > input.desired {
        Direction::Out
    } else {
        Direction::In
    };
    Some(Scaling {
        desired: clamped,
        direction,
        reason: format!(
            "desired count {} is outside minCount {}..maxCount {}",
            input.desired, p.min_count, p.max_count
        ),
    })
}

/// The count each metric asks for: the current one within the tolerance band, else in
/// proportion to how far the metric is from its target.
fn proposals<'v>(
    input: &ScalingInput<'_>,
    values: &'v [MetricValue],
) -> Vec<(u32, &'v MetricValue)> {
    let running = f64::from(input.running);
    values
        .iter()
        .map(|v| {
            let ratio = v.value / v.target;
            let wanted = if (ratio - 1.0).abs() <= TOLERANCE {
                input.desired
            } else {
                // Proportional; the small epsilon keeps float noise from adding a task.
                let exact = running * ratio;
                let rounded = (exact - 1e-9).ceil().max(0.0);
                u32::try_from(rounded as u64).unwrap_or(u32::MAX)
            };
            (wanted, v)
        })
        .collect()
}

/// What the window showed, for a reason: the metric values, the task count, the window.
fn evidence(input: &ScalingInput<'_>, values: &[MetricValue]) -> String {
    format!(
        "{} over {} tasks in {}s",
        describe(values),
        input.running,
        WINDOW_MS / 1000
    )
}

/// Scale-out to what `rule` wants, within maxCount and the cluster's room, once the last
/// scale-out's tasks run and its cooldown is over.
fn scale_out(
    input: &ScalingInput<'_>,
    wanted: u32,
    rule: &MetricValue,
    values: &[MetricValue],
) -> Option<Scaling> {
    let p = input.policy;
    // Wait until the last scale-out has started its tasks, and for the cooldown.
    if input.running < input.desired {
        return None;
    }
    if cooling(
        input.last_scale_out_at,
        p.scale_out_cooldown,
        input.now,
        input.counting_from,
    ) {
        return None;
    }
    let capped = wanted.min(p.max_count);
    let possible = input.desired.saturating_add(input.room);
    let desired = capped.min(possible);
    let short = if desired < capped {
        format!(
            "; capacity is short: the cluster has room for {} more tasks, {} wanted",
            input.room,
            capped - input.desired
        )
    } else {
        String::new()
    };
    let max_note = if capped < wanted {
        format!(" (capped at maxCount {})", p.max_count)
    } else {
        String::new()
    };
    let why = format!(
        "{}, rule {} target {}",
        evidence(input, values),
        rule.metric,
        rule.metric.format_target(rule.target)
    );
    if desired <= input.desired {
        // Nothing fits; say so once in a while rather than silently.
        return Some(Scaling {
            desired: input.desired,
            direction: Direction::Out,
            reason: format!(
                "cannot scale out {} -> {capped}: {why}{short}",
                input.desired
            ),
        });
    }
    Some(Scaling {
        desired,
        direction: Direction::Out,
        reason: format!(
            "scaled out {} -> {desired}: {why}{max_note}{short}",
            input.desired
        ),
    })
}

/// Scale-in when every metric wants fewer tasks, on a (nearly) full window of low samples
/// since the last change and after the cooldown: at most a tenth of the tasks, down to minCount.
fn scale_in(
    input: &ScalingInput<'_>,
    proposals: &[(u32, &MetricValue)],
    from: Timestamp,
    values: &[MetricValue],
) -> Option<Scaling> {
    let p = input.policy;
    let now = input.now;
    if p.disable_scale_in || !proposals.iter().all(|(w, _)| *w < input.desired) {
        return None;
    }
    // The ingresses' reports are evidence only for a policy that tracks requests.
    let requests = if p.target_tracking.iter().any(|t| !t.metric.is_utilization()) {
        input.requests
    } else {
        &[]
    };
    let oldest = input
        .samples
        .iter()
        .map(|s| s.at)
        .chain(requests.iter().map(|r| r.at))
        .filter(|at| *at >= from && *at <= now)
        .min()
        .unwrap_or(now);
    if oldest + SCALE_IN_EVIDENCE_MS > now {
        return None;
    }
    let last = input.last_scale_in_at.max(input.last_scale_out_at);
    if cooling(last, p.scale_in_cooldown, now, input.counting_from) {
        return None;
    }
    let wanted = proposals
        .iter()
        .map(|(w, _)| *w)
        .max()
        .unwrap_or(input.desired);
    let step = (input.desired / 10).max(1);
    // Only `scaleToZero.idleAfter` takes a service to zero.
    let floor = if p.scale_to_zero.is_some() {
        p.min_count.max(1)
    } else {
        p.min_count
    };
    let desired = wanted.max(input.desired.saturating_sub(step)).max(floor);
    if desired >= input.desired {
        return None;
    }
    Some(Scaling {
        desired,
        direction: Direction::In,
        reason: format!(
            "scaled in {} -> {desired}: {}, all below target; at most {step} per step",
            input.desired,
            evidence(input, values)
        ),
    })
}

#[cfg(test)]
mod tests {
    use berth_model::TargetTracking;

    use super::*;

    fn policy() -> Autoscaling {
        let cpu = TargetTracking {
            metric: ScalingMetric::CpuUtilization,
            target: 50.0,
        };
        Autoscaling::with_defaults(1, 10, vec![cpu])
    }

    /// A series of per-second samples of `tasks` tasks from `series(second)`.
    fn samples(from: u64, to: u64, tasks: u32, series: impl Fn(u64) -> f64) -> Vec<Sample> {
        (from..to)
            .flat_map(|sec| {
                let v = series(sec);
                (0..tasks).map(move |_| Sample {
                    at: sec * 1000,
                    cpu_percent: v,
                    memory_percent: 10.0,
                })
            })
            .collect()
    }

    /// `count` tasks, all running, that never scaled, with room for ten more.
    fn steady<'a>(
        policy: &'a Autoscaling,
        samples: &'a [Sample],
        count: u32,
        now: Timestamp,
    ) -> ScalingInput<'a> {
        ScalingInput {
            policy,
            samples,
            requests: &[],
            last_activity_at: 0,
            desired: count,
            running: count,
            last_scale_out_at: 0,
            last_scale_in_at: 0,
            room: 10,
            now,
            counting_from: 0,
        }
    }

    /// Runs the autoscaler once a second over `seconds`, with tasks following the desired
    /// count at once and per-task load `load(second, count)`. Returns the count after each
    /// second and the reasons.
    fn simulate(
        p: &Autoscaling,
        seconds: u64,
        start: u32,
        load: impl Fn(u64, u32) -> f64,
    ) -> (Vec<u32>, Vec<String>) {
        let mut desired = start;
        let (mut out_at, mut in_at) = (0, 0);
        let mut history: Vec<Sample> = Vec::new();
        let mut counts = Vec::new();
        let mut reasons = Vec::new();
        for sec in 1..=seconds {
            let v = load(sec, desired);
            history.extend((0..desired).map(|_| Sample {
                at: sec * 1000,
                cpu_percent: v,
                memory_percent: 10.0,
            }));
            let input = ScalingInput {
                policy: p,
                samples: &history,
                requests: &[],
                last_activity_at: 0,
                desired,
                running: desired,
                last_scale_out_at: out_at,
                last_scale_in_at: in_at,
                room: 100,
                now: sec * 1000,
                counting_from: 0,
            };
            if let Some(s) = decide(&input) {
                if s.desired != desired {
                    match s.direction {
                        Direction::Out => out_at = sec * 1000,
                        Direction::In => in_at = sec * 1000,
                    }
                    desired = s.desired;
                    reasons.push(s.reason);
                }
            }
            counts.push(desired);
        }
        (counts, reasons)
    }

    /// Total work of `units` tasks' worth at 100%, shared by however many tasks run.
    fn shared(units: f64) -> impl Fn(u64, u32) -> f64 {
        move |_, n| 100.0 * units / f64::from(n.max(1))
    }

    #[test]
    fn a_step_in_load_scales_out_proportionally_within_seconds() {
        // Load worth 4 busy tasks: at 50% target that needs 8 tasks.
        let (counts, reasons) = simulate(&policy(), 60, 2, |s, n| {
            if s < 5 {
                48.0
            } else {
                shared(4.0)(s, n)
            }
        });
        let first_out = counts.iter().position(|c| *c > 2).expect("scaled out");
        assert!(first_out <= 8, "scaled out after {first_out}s: {counts:?}");
        assert_eq!(*counts.last().expect("counts"), 8, "{counts:?}");
        assert!(reasons[0].starts_with("scaled out 2 -> "), "{reasons:?}");
        assert!(reasons[0].contains("CPUUtilization"), "{reasons:?}");
        assert!(
            reasons[0].contains("rule CPUUtilization target 50%"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_single_spike_does_not_scale() {
        let (counts, _) = simulate(&policy(), 60, 2, |s, _| if s == 30 { 400.0 } else { 30.0 });
        assert!(counts.iter().all(|c| *c == 2), "{counts:?}");
    }

    #[test]
    fn a_noisy_plateau_at_the_target_does_not_flap() {
        let (counts, reasons) = simulate(&policy(), 300, 4, |s, _| {
            50.0 + if s % 2 == 0 { 4.0 } else { -4.0 } + (s % 7) as f64 * 0.5
        });
        assert!(reasons.is_empty(), "{reasons:?}");
        assert!(counts.iter().all(|c| *c == 4));
    }

    #[test]
    fn a_load_drop_scales_in_slowly_and_stepwise_down_to_min() {
        let mut p = policy();
        p.max_count = 40;
        let (counts, reasons) = simulate(&p, 2400, 30, |_, _| 1.0);
        // One step per cooldown: 30 -> 27 (10%) -> ... never more than a tenth at once.
        for w in counts.windows(2) {
            assert!(w[1] + (w[0] / 10).max(1) >= w[0], "{w:?}");
        }
        let first_in = counts.iter().position(|c| *c < 30).expect("scaled in");
        assert!(first_in >= 15, "scaled in after {first_in}s");
        assert_eq!(*counts.last().expect("counts"), 1, "{counts:?}");
        assert!(reasons.iter().all(|r| r.starts_with("scaled in")));
    }

    #[test]
    fn min_and_max_clamp_and_capacity_is_reported() {
        let (counts, reasons) = simulate(&policy(), 60, 2, shared(50.0));
        assert_eq!(*counts.last().expect("counts"), 10);
        assert!(
            reasons.iter().any(|r| r.contains("capped at maxCount 10")),
            "{reasons:?}"
        );
        let p = policy();
        let hot = samples(0, 20, 2, |_| 100.0);
        let input = ScalingInput {
            room: 1,
            ..steady(&p, &hot, 2, 20_000)
        };
        let s = decide(&input).expect("a decision");
        assert_eq!(s.desired, 3);
        assert!(s.reason.contains("capacity is short"), "{}", s.reason);
        let full = ScalingInput {
            room: 0,
            ..input.clone()
        };
        let s = decide(&full).expect("a decision");
        assert_eq!(s.desired, 2);
        assert!(
            s.reason.starts_with("cannot scale out 2 -> 4"),
            "{}",
            s.reason
        );
        // Below minCount (e.g. a manual scale to 0): back to min at once, no metrics needed.
        let zero = ScalingInput {
            desired: 0,
            running: 0,
            samples: &[],
            ..input
        };
        assert_eq!(decide(&zero).map(|s| s.desired), Some(1));
    }

    #[test]
    fn cooldowns_hold_and_disable_scale_in_means_out_only() {
        let p = policy();
        let hot = samples(80, 100, 2, |_| 100.0);
        let input = ScalingInput {
            last_scale_out_at: 95_000,
            ..steady(&p, &hot, 2, 100_000)
        };
        assert_eq!(decide(&input), None, "within the scale-out cooldown");
        let later = ScalingInput {
            now: 105_000,
            counting_from: 0,
            samples: &samples(85, 105, 2, |_| 100.0),
            ..input.clone()
        };
        assert_eq!(decide(&later).map(|s| s.desired), Some(4));
        // Still starting the last scale-out's tasks: wait.
        let starting = ScalingInput {
            running: 1,
            ..later.clone()
        };
        assert_eq!(decide(&starting), None);
        let cold = samples(180, 200, 4, |_| 5.0);
        let mut quiet = ScalingInput {
            samples: &cold,
            desired: 4,
            running: 4,
            now: 200_000,
            counting_from: 0,
            last_scale_out_at: 150_000,
            ..input.clone()
        };
        assert_eq!(
            decide(&quiet),
            None,
            "scale-in waits the cooldown after a scale-out"
        );
        quiet.last_scale_out_at = 100_000;
        assert_eq!(decide(&quiet).map(|s| s.desired), Some(3));
        let mut out_only = p.clone();
        out_only.disable_scale_in = true;
        quiet.policy = &out_only;
        assert_eq!(decide(&quiet), None);
    }

    #[test]
    fn a_new_leader_waits_for_a_window_and_keeps_the_cooldowns() {
        let p = policy();
        // A new leader has no samples yet: no decision.
        let input = steady(&p, &[], 2, 100_000);
        assert_eq!(decide(&input), None);
        // Samples older than the window (from before the change) do not count.
        let old = samples(50, 70, 2, |_| 100.0);
        assert_eq!(
            decide(&ScalingInput {
                samples: &old,
                ..input.clone()
            }),
            None
        );
        // The replicated last scale-out time still holds the cooldown.
        let fresh = samples(95, 100, 2, |_| 100.0);
        let cooling = ScalingInput {
            samples: &fresh,
            last_scale_out_at: 95_000,
            ..input.clone()
        };
        assert_eq!(decide(&cooling), None);
    }

    #[test]
    fn scale_out_needs_one_metric_scale_in_needs_all() {
        let mut p = policy();
        p.target_tracking.push(TargetTracking {
            metric: ScalingMetric::MemoryUtilization,
            target: 50.0,
        });
        let mut hot_memory = samples(0, 20, 4, |_| 5.0);
        for s in &mut hot_memory {
            s.memory_percent = 90.0;
        }
        let input = steady(&p, &hot_memory, 4, 20_000);
        let s = decide(&input).expect("scales out on memory");
        assert_eq!(s.desired, 8);
        assert!(s.reason.contains("rule MemoryUtilization"), "{}", s.reason);
        let mut mixed = samples(0, 20, 4, |_| 5.0);
        for s in &mut mixed {
            s.memory_percent = 50.0;
        }
        assert_eq!(
            decide(&ScalingInput {
                samples: &mixed,
                ..input
            }),
            None,
            "memory is at target"
        );
    }

    #[test]
    fn a_cooldown_stamped_ahead_by_another_leader_counts_from_this_leaders_start() {
        // Scaled "at" an hour ahead by the last leader's clock; this one leads since 100 s.
        assert!(super::cooling(3_700_000, 60, 130_000, 100_000));
        assert!(!super::cooling(3_700_000, 60, 170_000, 100_000));
        // Never scaled: no cooldown.
        assert!(!super::cooling(0, 60, 130_000, 100_000));
    }

    /// minCount 0, RequestsPerTask 10 per task, to zero after 60 s without a request.
    fn serverless() -> Autoscaling {
        let mut p = Autoscaling::with_defaults(
            0,
            10,
            vec![TargetTracking {
                metric: ScalingMetric::RequestsPerTask,
                target: 10.0,
            }],
        );
        p.scale_to_zero = Some(berth_model::ScaleToZero {
            idle_after: 60,
            activation_timeout: 30,
        });
        p
    }

    /// One report a second from `ingresses` ingresses over `from..to` s, each seeing `rate`
    /// requests per second and `in_flight` requests in flight.
    fn reports(
        from: u64,
        to: u64,
        ingresses: u64,
        rate: f64,
        in_flight: f64,
    ) -> Vec<RequestSample> {
        (from..to)
            .flat_map(|sec| {
                (0..ingresses).map(move |source| RequestSample {
                    at: sec * 1000,
                    source,
                    rate,
                    in_flight,
                })
            })
            .collect()
    }

    #[test]
    fn requests_per_task_sum_the_ingresses_and_scale_out_proportionally() {
        let p = serverless();
        // Two ingresses, 40 req/s each: 80 req/s over 2 tasks is 40 per task, target 10.
        let load = reports(0, 20, 2, 40.0, 3.0);
        let input = ScalingInput {
            requests: &load,
            last_activity_at: 19_000,
            ..steady(&p, &[], 2, 20_000)
        };
        let values = metric_values(&p, &[], &load, 2, 0, 20_000);
        assert_eq!(values.len(), 1);
        assert!((values[0].value - 40.0).abs() < 1e-9, "{values:?}");
        let s = decide(&input).expect("scales out");
        assert_eq!(s.desired, 8);
        assert!(
            s.reason
                .contains("RequestsPerTask 40.0 req/s per task (target 10 req/s per task)"),
            "{}",
            s.reason
        );
        // Concurrency: 6 in flight over 2 tasks is 3 per task; target 1 wants 6 tasks.
        let mut c = p.clone();
        c.target_tracking[0] = TargetTracking {
            metric: ScalingMetric::ConcurrencyPerTask,
            target: 1.0,
        };
        let s = decide(&ScalingInput {
            policy: &c,
            ..input
        })
        .expect("scales out on concurrency");
        assert_eq!(s.desired, 6);
    }

    #[test]
    fn only_idle_after_takes_a_service_to_zero() {
        let p = serverless();
        // No request for 30 s: the stepwise scale-in stops at one task.
        let quiet = reports(0, 100, 1, 0.0, 0.0);
        let mut input = ScalingInput {
            requests: &quiet,
            last_activity_at: 70_000,
            ..steady(&p, &[], 3, 100_000)
        };
        let s = decide(&input).expect("scales in");
        assert_eq!((s.desired, s.direction), (2, Direction::In));
        input.desired = 1;
        input.running = 1;
        input.last_scale_in_at = 0;
        assert_eq!(decide(&input), None, "one task stays until idleAfter");
        // 60 s without a request: to zero, whatever the scale-in cooldown.
        input.last_activity_at = 40_000;
        input.last_scale_in_at = 99_000;
        let s = decide(&input).expect("to zero");
        assert_eq!((s.desired, s.direction), (0, Direction::In));
        assert!(
            s.reason
                .contains("no request through any ingress for 60s (scaleToZero.idleAfter 60s)"),
            "{}",
            s.reason
        );
        // A metric that wants more tasks keeps it up.
        let mut busy = p.clone();
        busy.target_tracking.push(TargetTracking {
            metric: ScalingMetric::CpuUtilization,
            target: 50.0,
        });
        let hot = samples(80, 100, 1, |_| 95.0);
        assert_eq!(
            decide(&ScalingInput {
                policy: &busy,
                samples: &hot,
                last_scale_in_at: 0,
                ..input.clone()
            })
            .map(|s| s.direction),
            Some(Direction::Out)
        );
        // A new leader counts the idle time from its own start.
        assert_eq!(
            decide(&ScalingInput {
                counting_from: 50_000,
                ..input.clone()
            }),
            None
        );
    }

    #[test]
    fn a_service_at_zero_wakes_when_requests_wait_and_only_then() {
        let p = serverless();
        let idle = reports(80, 100, 1, 0.0, 0.0);
        let at_zero = ScalingInput {
            requests: &idle,
            desired: 0,
            running: 0,
            last_activity_at: 10_000,
            last_scale_in_at: 50_000,
            ..steady(&p, &[], 0, 100_000)
        };
        assert_eq!(decide(&at_zero), None);
        let held = reports(98, 100, 1, 0.0, 2.0);
        let s = decide(&ScalingInput {
            requests: &held,
            ..at_zero.clone()
        })
        .expect("wakes");
        assert_eq!((s.desired, s.direction), (1, Direction::Out));
        assert!(s.reason.starts_with("woke 0 -> 1"), "{}", s.reason);
        // Without scaleToZero, zero is not left by requests (minCount 0 is refused anyway).
        let mut plain = p.clone();
        plain.scale_to_zero = None;
        assert_eq!(
            decide(&ScalingInput {
                policy: &plain,
                requests: &held,
                ..at_zero
            }),
            None
        );
    }

    #[test]
    fn a_silent_ingress_stops_counting_and_reports_are_no_evidence_for_cpu_policies() {
        let p = serverless();
        // Source 1 stopped reporting 10 s ago; only source 0 counts.
        let mut load = reports(0, 20, 1, 40.0, 0.0);
        load.extend(
            reports(0, 10, 1, 400.0, 0.0)
                .into_iter()
                .map(|r| RequestSample { source: 1, ..r }),
        );
        let values = metric_values(&p, &[], &load, 1, 0, 20_000);
        assert!((values[0].value - 40.0).abs() < 1e-9, "{values:?}");
        // A CPU policy with 2 s of low CPU samples and 20 s of ingress reports: not enough
        // evidence to scale in.
        let cpu = policy();
        let low = samples(18, 20, 4, |_| 5.0);
        let quiet = reports(0, 20, 1, 0.0, 0.0);
        let input = ScalingInput {
            requests: &quiet,
            ..steady(&cpu, &low, 4, 20_000)
        };
        assert_eq!(decide(&input), None);
    }
}
