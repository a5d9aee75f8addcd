//! Aligned text tables for query answers (Chinese characters count as two columns).

use serde_json::Value;

/// Display width: CJK characters count as two columns.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F
            | 0x2E80..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6 => 2,
            _ => 1,
        })
        .sum()
}

/// Prints a JSON report answer as an aligned table (at most `limit` rows).
pub(crate) fn print_table(title: &str, v: &Value, limit: usize) {
    if !title.is_empty() {
        println!("\n{title}");
    }
    let columns: Vec<String> = v["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .take(limit)
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| match c {
                                    Value::String(s) => s.clone(),
                                    Value::Null => "".into(),
                                    other => other.to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|c| width(c)).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(width(c));
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - width(c))))
            .collect();
        println!("  {}", parts.join("  "));
    };
    line(&columns);
    println!(
        "  {}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for r in &rows {
        line(r);
    }
    let total = v["row_count"].as_u64().unwrap_or(0) as usize;
    if total > rows.len() {
        println!("  … {} more rows", total - rows.len());
    }
}
