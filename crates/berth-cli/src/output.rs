//! Rendering for `-o table|wide|json|yaml` (and `csv`, for `berth usage`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
    /// Comma-separated values: `berth usage` only.
    Csv,
}

/// `value` as JSON or YAML text.
pub fn render_structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Yaml => serde_yaml_ng::to_string(value)?,
        Format::Table | Format::Wide => unreachable!("tables are rendered by the caller"),
        Format::Csv => return Err(csv_only()),
    })
}

/// A listing of objects: JSON or YAML (the first object alone when `single`), or the table
/// `table` renders (its argument is true for `-o wide`).
pub fn render_list<T: Serialize>(
    format: Format,
    items: &[T],
    single: bool,
    table: impl FnOnce(bool) -> String,
) -> anyhow::Result<String> {
    match format {
        Format::Json | Format::Yaml if single => render_structured(format, &items[0]),
        Format::Json | Format::Yaml => render_structured(format, &items),
        Format::Table | Format::Wide => Ok(table(format == Format::Wide)),
        Format::Csv => Err(csv_only()),
    }
}

/// What `-o csv` says where it does not apply.
pub fn csv_only() -> anyhow::Error {
    anyhow::anyhow!("-o csv is for `berth usage`; use -o table, wide, json or yaml here")
}

/// Prints rows as columns padded to the widest cell, with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, rows));
}

/// Rows as columns padded to the widest cell, with a header.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut text = String::new();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// "3m", "2h", "5d" from `ts` to `now` (milliseconds since the epoch).
pub fn age(ts: u64, now: u64) -> String {
    humanise(Duration::from_millis(now.saturating_sub(ts)))
}

pub fn humanise(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(humanise(Duration::from_secs(42)), "42s");
        assert_eq!(humanise(Duration::from_secs(185)), "3m");
        assert_eq!(humanise(Duration::from_secs(7300)), "2h");
        assert_eq!(humanise(Duration::from_secs(3 * 86_400)), "3d");
    }
}
