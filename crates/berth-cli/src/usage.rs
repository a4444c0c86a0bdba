//! `berth usage`: what tasks requested and used, from the metering ledger, with an estimate of
//! what it would have cost at published prices.

use berth_model::{Accrued, Rates, ALL_NAMESPACES};
use berth_proto::v1 as pb;
use serde::Serialize;

use crate::args::UsageArgs;
use crate::output::{render_table, Format};
use crate::{Client, GlobalArgs};

/// One row as `-o json` and `-o csv` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_definition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    tasks: u64,
    task_seconds: f64,
    vcpu_seconds: f64,
    gb_seconds: f64,
    used_vcpu_seconds: f64,
    /// Average memory used while sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    used_memory_mib: Option<f64>,
    peak_memory_mib: f64,
    estimated_cost_usd: f64,
}

/// The whole report as `-o json|yaml` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    #[serde(with = "rfc3339")]
    from: u64,
    #[serde(with = "rfc3339")]
    to: u64,
    #[serde(with = "rfc3339")]
    accounted_to: u64,
    by: String,
    vcpu_hour_price: f64,
    gb_hour_price: f64,
    rows: Vec<Row>,
    total: Row,
}

mod rfc3339 {
    pub fn serialize<S: serde::Serializer>(at: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&berth_model::format_timestamp(*at))
    }
}

pub async fn run(global: &GlobalArgs, args: UsageArgs) -> anyhow::Result<()> {
    let since = crate::logs::parse_since(&args.since)?;
    let namespace = if args.all_namespaces {
        ALL_NAMESPACES.to_owned()
    } else {
        global.namespace.clone()
    };
    let req = pb::GetUsageRequest {
        namespace,
        service: args.service.clone().unwrap_or_default(),
        since,
        by: args.by.clone(),
    };
    let mut client = Client::new(global)?;
    let answer = client
        .request(req, |mut c, req| async move { c.get_usage(req).await })
        .await?;
    let rates = Rates {
        vcpu_hour: args.vcpu_hour_price,
        gb_hour: args.gb_hour_price,
    };
    print!("{}", render(global.output, &args.by, &answer, &rates)?);
    Ok(())
}

fn accrued(f: Option<&pb::UsageFigures>) -> Accrued {
    f.cloned().unwrap_or_default().into()
}

fn row(r: &pb::UsageRow, rates: &Rates) -> Row {
    let a = accrued(r.accrued.as_ref());
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    figures(
        Row {
            namespace: r.namespace.clone(),
            service: some(&r.service),
            task_definition: some(&r.task_definition),
            task_id: some(&r.task_id),
            tasks: r.tasks,
            ..empty()
        },
        &a,
        rates,
    )
}

fn empty() -> Row {
    Row {
        namespace: String::new(),
        service: None,
        task_definition: None,
        task_id: None,
        tasks: 0,
        task_seconds: 0.0,
        vcpu_seconds: 0.0,
        gb_seconds: 0.0,
        used_vcpu_seconds: 0.0,
        used_memory_mib: None,
        peak_memory_mib: 0.0,
        estimated_cost_usd: 0.0,
    }
}

fn figures(row: Row, a: &Accrued, rates: &Rates) -> Row {
    Row {
        task_seconds: a.task_ms as f64 / 1000.0,
        vcpu_seconds: a.vcpu_seconds(),
        gb_seconds: a.gb_seconds(),
        used_vcpu_seconds: a.used_vcpu_seconds(),
        used_memory_mib: a.used_memory_mib(),
        peak_memory_mib: a.memory_peak_bytes as f64 / (1024.0 * 1024.0),
        estimated_cost_usd: rates.cost(a),
        ..row
    }
}

/// The report in `format`: a table (the default) with a total line, JSON or YAML, or CSV.
fn render(
    format: Format,
    by: &str,
    answer: &pb::GetUsageResponse,
    rates: &Rates,
) -> anyhow::Result<String> {
    let rows: Vec<Row> = answer.rows.iter().map(|r| row(r, rates)).collect();
    let mut sum = Accrued::default();
    let mut tasks = 0;
    for r in &answer.rows {
        sum += accrued(r.accrued.as_ref());
        tasks += r.tasks;
    }
    let total = figures(
        Row {
            namespace: "TOTAL".into(),
            tasks,
            ..empty()
        },
        &sum,
        rates,
    );
    // The columns that name a row, by grouping.
    let names: &[&str] = match by {
        "namespace" => &["NAMESPACE"],
        "taskdef" => &["NAMESPACE", "SERVICE", "TASK DEFINITION"],
        "task" => &["NAMESPACE", "SERVICE", "TASK DEFINITION", "TASK"],
        _ => &["NAMESPACE", "SERVICE"],
    };
    let name_cells = |r: &Row| -> Vec<String> {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut cells = vec![r.namespace.clone()];
        if names.len() > 1 {
            cells.push(dash(&r.service));
        }
        if names.len() > 2 {
            cells.push(dash(&r.task_definition));
        }
        if names.len() > 3 {
            cells.push(dash(&r.task_id));
        }
        cells
    };
    match format {
        Format::Json | Format::Yaml => {
            let report = Report {
                from: answer.from,
                to: answer.to,
                accounted_to: answer.accounted_to,
                by: by.to_owned(),
                vcpu_hour_price: rates.vcpu_hour,
                gb_hour_price: rates.gb_hour,
                rows,
                total,
            };
            crate::output::render_structured(format, &report)
        }
        Format::Csv => {
            let mut header: Vec<&str> = names.to_vec();
            header.extend(CSV_FIGURES);
            let mut out = csv_line(header.iter().map(|h| h.to_lowercase().replace(' ', "_")));
            for r in &rows {
                let mut cells = name_cells(r);
                cells.extend(csv_figures(r));
                out.push_str(&csv_line(cells.into_iter()));
            }
            Ok(out)
        }
        Format::Table | Format::Wide => {
            let mut header: Vec<&str> = names.to_vec();
            header.extend([
                "TASKS",
                "VCPU-S",
                "GB-S",
                "USED VCPU-S",
                "AVG MEM",
                "PEAK MEM",
                "EST. COST",
            ]);
            let cells = |r: &Row| {
                let mut cells = name_cells(r);
                cells.extend([
                    r.tasks.to_string(),
                    format!("{:.3}", r.vcpu_seconds),
                    format!("{:.3}", r.gb_seconds),
                    format!("{:.3}", r.used_vcpu_seconds),
                    r.used_memory_mib
                        .map_or_else(|| "-".into(), |m| format!("{m:.1} MiB")),
                    if r.peak_memory_mib > 0.0 {
                        format!("{:.1} MiB", r.peak_memory_mib)
                    } else {
                        "-".into()
                    },
                    format!("${:.6}", r.estimated_cost_usd),
                ]);
                cells
            };
            let mut table: Vec<Vec<String>> = rows.iter().map(cells).collect();
            if rows.len() > 1 {
                let mut line = cells(&total);
                for c in line.iter_mut().take(names.len()).skip(1) {
                    *c = String::new();
                }
                table.push(line);
            }
            let mut out = format!(
                "Usage from {} to {} (closed buckets to {}); cost at ${}/vCPU-hour, ${}/GB-hour\n",
                berth_model::format_timestamp(answer.from),
                berth_model::format_timestamp(answer.to),
                berth_model::format_timestamp(answer.accounted_to),
                rates.vcpu_hour,
                rates.gb_hour,
            );
            if rows.is_empty() {
                out.push_str("No usage in that span.\n");
            } else {
                out.push_str(&render_table(&header, &table));
            }
            Ok(out)
        }
    }
}

const CSV_FIGURES: [&str; 8] = [
    "tasks",
    "task_seconds",
    "vcpu_seconds",
    "gb_seconds",
    "used_vcpu_seconds",
    "used_memory_mib",
    "peak_memory_mib",
    "estimated_cost_usd",
];

fn csv_figures(r: &Row) -> Vec<String> {
    vec![
        r.tasks.to_string(),
        format!("{:.3}", r.task_seconds),
        format!("{:.6}", r.vcpu_seconds),
        format!("{:.6}", r.gb_seconds),
        format!("{:.6}", r.used_vcpu_seconds),
        r.used_memory_mib
            .map_or_else(String::new, |m| format!("{m:.3}")),
        format!("{:.3}", r.peak_memory_mib),
        format!("{:.8}", r.estimated_cost_usd),
    ]
}

/// One CSV line (RFC 4180: cells with a comma, a quote or a line break are quoted).
fn csv_line(cells: impl Iterator<Item = String>) -> String {
    let cells: Vec<String> = cells
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c
            }
        })
        .collect();
    format!("{}\n", cells.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> pb::GetUsageResponse {
        let figures = |cpu: u64, mem: u64, ms: u64| pb::UsageFigures {
            task_ms: ms,
            cpu_unit_ms: cpu * ms,
            memory_mib_ms: mem * ms,
            used_cpu_unit_ms: cpu * ms / 4,
            used_memory_mib_ms: 100 * ms,
            sampled_ms: ms,
            memory_peak_bytes: 150 * 1024 * 1024,
        };
        pb::GetUsageResponse {
            rows: vec![
                pb::UsageRow {
                    namespace: "default".into(),
                    service: "web".into(),
                    tasks: 120,
                    accrued: Some(figures(256, 512, 3_600_000)),
                    ..Default::default()
                },
                pb::UsageRow {
                    namespace: "default".into(),
                    tasks: 1,
                    accrued: Some(figures(1024, 2048, 60_000)),
                    ..Default::default()
                },
            ],
            from: 1_800_000_000_000,
            to: 1_800_003_600_000,
            accounted_to: 1_800_003_580_000,
        }
    }

    #[test]
    fn a_table_names_each_service_and_totals_the_rows() {
        let text = render(Format::Table, "service", &answer(), &Rates::FARGATE).expect("table");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("Usage from 2027-01-15T08:00:00.000Z"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("NAMESPACE   SERVICE   TASKS"),
            "{text}"
        );
        // A quarter vCPU for an hour: 900 vCPU-seconds; half a GB: 1800 GB-seconds.
        assert!(
            lines[2].contains("web") && lines[2].contains("900.000"),
            "{text}"
        );
        assert!(
            lines[2].contains("1800.000") && lines[2].contains("$0.01234"),
            "{text}"
        );
        assert!(lines[3].starts_with("default     -"), "{text}");
        assert!(
            lines[4].starts_with("TOTAL") && lines[4].contains("121"),
            "{text}"
        );
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_row() {
        let text = render(Format::Csv, "service", &answer(), &Rates::FARGATE).expect("csv");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "namespace,service,tasks,task_seconds,vcpu_seconds,gb_seconds,used_vcpu_seconds,used_memory_mib,peak_memory_mib,estimated_cost_usd"
        );
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("default,web,120,3600.000,900.000000,1800.000000,225.000000,100.000,150.000,0.01234"), "{text}");
        assert_eq!(
            csv_line(["a,b".to_owned(), "c\"d".to_owned()].into_iter()),
            "\"a,b\",\"c\"\"d\"\n"
        );
    }

    #[test]
    fn json_carries_the_span_the_prices_and_a_total() {
        let text = render(Format::Json, "namespace", &answer(), &Rates::FARGATE).expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["by"], "namespace");
        assert_eq!(v["rows"][0]["vcpuSeconds"], 900.0);
        assert_eq!(v["total"]["tasks"], 121);
        assert_eq!(v["accountedTo"], "2027-01-15T08:59:40.000Z");
    }
}
