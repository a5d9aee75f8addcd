//! `careledger sql` with no statement: an interactive shell with history and tab completion
//! of table names, columns and SQL keywords. Statements end with `;`; backslash commands
//! (`\d`, `\format`, `\report`, `\q`, …) act at once.

use std::borrow::Cow;
use std::path::PathBuf;

use anyhow::Result;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Editor, Helper};

use crate::client::{Backend, Output, parse_params};

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "JOIN",
    "LEFT",
    "RIGHT",
    "INNER",
    "FULL",
    "OUTER",
    "ON",
    "USING",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "DISTINCT",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "WITH",
    "UNION",
    "ALL",
    "BETWEEN",
    "LIKE",
    "DESC",
    "ASC",
    "OVER",
    "PARTITION",
    "EXPLAIN",
    "DATE",
    "INTERVAL",
    "CAST",
    "COALESCE",
    "EXISTS",
];

const COMMANDS: &[&str] = &[
    "\\d",
    "\\format",
    "\\known_at",
    "\\report",
    "\\reports",
    "\\help",
    "\\q",
];

/// Completes table names, column names, SQL keywords and backslash commands.
#[derive(Debug, Default)]
pub(crate) struct SqlHelper {
    tables: Vec<String>,
    columns: Vec<String>,
}

impl SqlHelper {
    pub(crate) fn new(tables: &[(String, Vec<String>)]) -> SqlHelper {
        let mut columns: Vec<String> = tables.iter().flat_map(|(_, c)| c.clone()).collect();
        columns.sort();
        columns.dedup();
        SqlHelper {
            tables: tables.iter().map(|(t, _)| t.clone()).collect(),
            columns,
        }
    }

    /// The start of the word under the cursor and the candidates for it.
    pub(crate) fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '\\'))
            .map(|(i, c)| i + c.len_utf8())
            .unwrap_or(0);
        let word = &before[start..];
        if word.is_empty() {
            return (start, Vec::new());
        }
        if word.starts_with('\\') {
            return (
                start,
                COMMANDS
                    .iter()
                    .filter(|c| c.starts_with(word))
                    .map(|c| c.to_string())
                    .collect(),
            );
        }
        let lower = word.to_lowercase();
        // After FROM / JOIN / \d only tables make sense; elsewhere tables come first.
        let prev = before[..start]
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_lowercase();
        let tables_only = matches!(prev.as_str(), "from" | "join" | "\\d");
        let mut out: Vec<String> = self
            .tables
            .iter()
            .filter(|t| t.starts_with(&lower))
            .cloned()
            .collect();
        if !tables_only {
            let columns: Vec<String> = self
                .columns
                .iter()
                .filter(|c| c.starts_with(&lower) && !out.contains(c))
                .cloned()
                .collect();
            out.extend(columns);
            let upper = word.to_uppercase();
            let lowercase_typed = word.chars().all(|c| !c.is_uppercase());
            out.extend(KEYWORDS.iter().filter(|k| k.starts_with(&upper)).map(|k| {
                if lowercase_typed {
                    k.to_lowercase()
                } else {
                    k.to_string()
                }
            }));
        }
        (start, out)
    }
}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = self.candidates(line, pos);
        Ok((
            start,
            words
                .into_iter()
                .map(|w| Pair {
                    display: w.clone(),
                    replacement: w,
                })
                .collect(),
        ))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}

impl Highlighter for SqlHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        Cow::Borrowed(line)
    }
}

impl Validator for SqlHelper {}

impl Helper for SqlHelper {}

fn history_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CARELEDGER_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".careledger_history"))
}

const HELP: &str = "\
Statements end with ';' and may span lines. Commands:
  \\d               list the tables            \\d NAME   its columns
  \\format FMT      table, csv or json          \\known_at T|off   ask as of an instant
  \\reports         list the named reports      \\report NAME k=v …   run one
  \\q               quit (or Ctrl-D)";

/// Runs the shell until `\q` or end of input.
pub(crate) async fn run(backend: Backend, mut output: Output) -> Result<()> {
    let tables = backend.tables().await?;
    let mut rl: Editor<SqlHelper, FileHistory> =
        Editor::with_config(Config::builder().auto_add_history(false).build())?;
    rl.set_helper(Some(SqlHelper::new(&tables)));
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let where_ = match &backend {
        Backend::Remote { server, .. } => server.clone(),
        Backend::Local { warehouse } => warehouse.store().url().to_string(),
    };
    println!(
        "careledger SQL on {where_}: {} tables; \\help for commands, \\q to quit",
        tables.len()
    );
    let mut known_at: Option<String> = None;
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "careledger> "
        } else {
            "        ..> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('\\') {
            let _ = rl.add_history_entry(trimmed);
            let mut words = trimmed.split_whitespace();
            let cmd = words.next().unwrap_or_default();
            let rest: Vec<&str> = words.collect();
            let outcome: Result<bool> = async {
                match cmd {
                    "\\q" | "\\quit" => return Ok(true),
                    "\\help" | "\\?" => println!("{HELP}"),
                    "\\d" => match rest.first() {
                        None => {
                            for (t, cols) in &tables {
                                println!("  {t}  ({} columns)", cols.len());
                            }
                        }
                        Some(name) => match tables.iter().find(|(t, _)| t == name) {
                            Some((_, cols)) => println!("  {}", cols.join(", ")),
                            None => println!("no table named {name}"),
                        },
                    },
                    "\\format" => match rest.first() {
                        Some(f) if matches!(*f, "table" | "csv" | "json") => {
                            output.format = f.to_string();
                        }
                        _ => println!("\\format table|csv|json"),
                    },
                    "\\known_at" => match rest.first() {
                        Some(&"off") | None => known_at = None,
                        Some(t) => known_at = Some(t.to_string()),
                    },
                    "\\reports" => {
                        for r in careledger_warehouse::reports::catalog() {
                            let params: Vec<&str> =
                                r.params.iter().map(|p| p.name.as_str()).collect();
                            println!("  {}  ({})  {}", r.name, params.join(", "), r.title_en);
                        }
                    }
                    "\\report" => {
                        let Some(name) = rest.first() else {
                            println!("\\report NAME k=v …");
                            return Ok(false);
                        };
                        let params: Vec<String> = rest[1..].iter().map(|s| s.to_string()).collect();
                        let mut params = parse_params(&params)?;
                        if let Some(k) = &known_at {
                            params.push(("known_at".into(), k.clone()));
                        }
                        let body = backend.report(name, &params, output.wire_format()?).await?;
                        output.deliver(&body)?;
                    }
                    other => println!("unknown command {other}; \\help lists them"),
                }
                Ok(false)
            }
            .await;
            match outcome {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        if trimmed.is_empty() && buffer.is_empty() {
            continue;
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if !trimmed.ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut buffer);
        let _ = rl.add_history_entry(statement.trim());
        let sql = statement.trim().trim_end_matches(';');
        let started = std::time::Instant::now();
        let result = async {
            let body = backend
                .sql(sql, known_at.as_deref(), output.wire_format()?)
                .await?;
            output.deliver(&body)
        }
        .await;
        match result {
            Ok(()) => eprintln!("({:.3} s)", started.elapsed().as_secs_f64()),
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SqlHelper;

    fn helper() -> SqlHelper {
        SqlHelper::new(&[
            ("status_episodes".into(), vec!["entry_reason".into()]),
            ("services".into(), vec!["service_type".into()]),
            ("women".into(), vec!["person_key".into()]),
        ])
    }

    #[test]
    fn completes_tables_after_from_and_keywords_elsewhere() {
        let h = helper();
        let line = "SELECT * FROM st";
        assert_eq!(
            h.candidates(line, line.len()),
            (14, vec!["status_episodes".to_string()])
        );
        let line = "sel";
        assert_eq!(h.candidates(line, line.len()).1, vec!["select".to_string()]);
        let line = "SELECT ent";
        assert_eq!(
            h.candidates(line, line.len()).1,
            vec!["entry_reason".to_string()]
        );
        let line = "SELECT * FROM women WH";
        assert_eq!(
            h.candidates(line, line.len()).1,
            vec!["WHERE".to_string(), "WHEN".to_string()]
        );
        let line = "\\d se";
        assert_eq!(
            h.candidates(line, line.len()).1,
            vec!["services".to_string()]
        );
        let line = "\\fo";
        assert_eq!(
            h.candidates(line, line.len()).1,
            vec!["\\format".to_string()]
        );
    }

    #[test]
    fn completes_in_the_middle_of_a_line_with_chinese_text() {
        let h = helper();
        let line = "SELECT '台账' FROM wo WHERE 1=1";
        let pos = line.find(" WHERE").unwrap();
        let (start, words) = h.candidates(line, pos);
        assert_eq!(&line[start..pos], "wo");
        assert_eq!(words, vec!["women".to_string()]);
    }
}
