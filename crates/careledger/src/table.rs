//! Query answers drawn as text: aligned tables in psql's style (`comfy-table`, which measures
//! with `unicode-width`, so Chinese characters, including the rare ones of village names
//! outside the basic CJK block, take their two columns), or one record per block (`\x`).
//! NULL is printed as `(null)`, never as a blank that reads like an empty string.

use comfy_table::{CellAlignment, Table};
use serde_json::Value;
use unicode_width::UnicodeWidthStr;

/// How a NULL cell is shown.
pub(crate) const NULL: &str = "(null)";

/// psql's look: ` a | b `, a `---+---` rule under the header, no outer borders.
const PSQL: &str = "     -+ |          ";

/// Column names and rows (at most `limit`) of a JSON answer, and how many rows it holds.
fn cells(v: &Value, limit: usize) -> (Vec<String>, Vec<Vec<Value>>, usize) {
    let columns: Vec<String> = v["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let all = v["rows"].as_array().cloned().unwrap_or_default();
    let total = v["row_count"].as_u64().map_or(all.len(), |n| n as usize);
    let rows = all
        .into_iter()
        .take(limit)
        .map(|r| r.as_array().cloned().unwrap_or_default())
        .collect();
    (columns, rows, total)
}

fn text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Null => NULL.into(),
        other => other.to_string(),
    }
}

/// A JSON answer as an aligned table (at most `limit` rows), numbers right-aligned, then a
/// row count as psql prints it.
pub(crate) fn render_table(v: &Value, limit: usize) -> String {
    let (columns, rows, total) = cells(v, limit);
    let mut table = Table::new();
    table.load_preset(PSQL);
    table.set_header(columns.clone());
    for r in &rows {
        table.add_row(r.iter().map(text).collect::<Vec<_>>());
    }
    for (i, column) in table.column_iter_mut().enumerate() {
        let numeric = rows.iter().any(|r| r.get(i).is_some_and(Value::is_number))
            && rows
                .iter()
                .all(|r| r.get(i).is_none_or(|c| c.is_number() || c.is_null()));
        if numeric {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out.push_str(&count_line(rows.len(), total));
    out
}

/// One block per record, `column | value` lines (psql's `\x`).
pub(crate) fn render_expanded(v: &Value, limit: usize) -> String {
    let (columns, rows, total) = cells(v, limit);
    let name_width = columns.iter().map(|c| c.width()).max().unwrap_or(0);
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let head = format!("-[ RECORD {} ]", n + 1);
        let rule = (name_width + 3).saturating_sub(head.width()).max(1);
        out.push_str(&format!("{head}{}\n", "-".repeat(rule)));
        for (name, cell) in columns.iter().zip(r) {
            let pad = " ".repeat(name_width - name.width());
            out.push_str(&format!("{name}{pad} | {}\n", text(cell)));
        }
    }
    if rows.is_empty() {
        out.push_str("(no rows)\n");
    }
    if total > rows.len() {
        out.push_str(&format!("… {} more rows\n", total - rows.len()));
    }
    out
}

fn count_line(shown: usize, total: usize) -> String {
    let mut line = match total {
        1 => "(1 row)".to_string(),
        n => format!("({n} rows)"),
    };
    if total > shown {
        line.push_str(&format!(", {} shown", shown));
    }
    line.push('\n');
    line
}

/// Prints a report answer under its title (the demo's summaries).
pub(crate) fn print_table(title: &str, v: &Value, limit: usize) {
    if !title.is_empty() {
        println!("\n{title}");
    }
    print!("{}", render_table(v, limit));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A rare CJK character (U+2133 6, outside the basic block) takes two columns like the
    /// others: every line of the table is equally wide on a terminal.
    #[test]
    fn rare_chinese_characters_keep_the_columns_aligned() {
        let v = json!({
            "columns": [{"name": "region_name"}, {"name": "women"}],
            "rows": [["那𡌶村委会", 12], ["南宁市", 3456], [null, null]],
            "row_count": 3
        });
        let text = render_table(&v, usize::MAX);
        let lines: Vec<&str> = text.lines().take(5).collect();
        assert!(lines[2].contains("那𡌶村委会"), "{text}");
        assert!(lines[4].contains(NULL), "NULL is visible: {text}");
        let bar = |l: &str| l[..l.find('|').unwrap()].width();
        assert!(
            lines
                .iter()
                .filter(|l| l.contains('|'))
                .all(|l| bar(l) == bar(lines[0])),
            "the column rule is in one place on every line:\n{text}"
        );
        assert!(text.ends_with("(3 rows)\n"), "{text}");
        // Numbers are right-aligned: 12 ends where 3456 ends.
        assert_eq!(lines[2].width(), lines[3].width(), "{text}");
    }

    #[test]
    fn expanded_shows_one_block_per_record() {
        let v = json!({
            "columns": [{"name": "a"}, {"name": "longer"}],
            "rows": [[1, "x"], [2, null]],
            "row_count": 2
        });
        let text = render_expanded(&v, usize::MAX);
        assert_eq!(
            text,
            "-[ RECORD 1 ]-\na      | 1\nlonger | x\n-[ RECORD 2 ]-\na      | 2\nlonger | (null)\n"
        );
    }
}
