//! `careledger sql` with no statement: an interactive shell with history and tab completion
//! of table names, columns and SQL keywords, and `careledger sql -f FILE`. Statements end
//! with `;`; backslash commands (`\d`, `\format`, `\x`, `\timing`, `\i`, `\o`, `\report`,
//! `\q`, …) act at once. Answers go to standard output (or the `\o` file); the banner,
//! timings and errors to standard error, so the answers can be piped.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use careledger_gateway::query::TableInfo;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Editor, Helper};
use serde_json::json;

use crate::client::{Backend, Output, parse_params};
use crate::table::render_table;

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
    "\\i",
    "\\o",
    "\\timing",
    "\\x",
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
  \\d               the tables                  \\d NAME   its columns, types, nullability
  \\reports         the named reports           \\report NAME k=v …   run one
  \\format FMT      table, csv or json          \\x [on|off]   one block per record
  \\known_at T|off  ask as of an instant        \\timing [on|off]   time each answer
  \\i FILE          run the statements of FILE  \\o [FILE]   answers to FILE (append), or back
  \\q               quit (or Ctrl-D)
Answers go to standard output; the banner, timings and errors to standard error.";

/// Files `\i` may open inside one another (a file that includes itself stops there).
const MAX_INCLUDE_DEPTH: usize = 16;

/// What a shell holds between statements.
pub(crate) struct Session {
    backend: Backend,
    output: Output,
    tables: Vec<TableInfo>,
    known_at: Option<String>,
    expanded: bool,
    timing: bool,
    /// `\o FILE` (or `--output FILE`): answers are appended there.
    out_file: Option<(PathBuf, std::fs::File)>,
    depth: usize,
}

/// What a line did.
pub(crate) enum Flow {
    Continue,
    Quit,
}

impl Session {
    pub(crate) async fn new(
        backend: Backend,
        output: Output,
        known_at: Option<String>,
    ) -> Result<Session> {
        let tables = backend.tables().await?;
        let out_file = match &output.output {
            Some(path) => Some((
                path.clone(),
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )),
            None => None,
        };
        Ok(Session {
            backend,
            output,
            tables,
            known_at,
            expanded: false,
            timing: false,
            out_file,
            depth: 0,
        })
    }

    /// Writes an answer where answers go (standard output, or the `\o` file).
    fn emit(&mut self, text: &str) -> Result<()> {
        match &mut self.out_file {
            Some((path, file)) => file
                .write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display())),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
                Ok(())
            }
        }
    }

    /// Draws an answer in the session's format.
    fn show(&mut self, body: &Bytes) -> Result<()> {
        let text = self.output.text(body, self.expanded)?;
        self.emit(&text)
    }

    /// `\timing`: how long an answer took, on stderr.
    fn timed(&self, started: std::time::Instant) {
        if self.timing {
            eprintln!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
        }
    }

    /// Runs one statement (without its `;`).
    async fn statement(&mut self, sql: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let body = self
            .backend
            .sql(sql, self.known_at.as_deref(), self.output.wire_format()?)
            .await?;
        self.show(&body)?;
        self.timed(started);
        Ok(())
    }

    /// Runs one backslash command.
    async fn command(&mut self, line: &str) -> Result<Flow> {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let rest: Vec<&str> = words.collect();
        match cmd {
            "\\q" | "\\quit" => return Ok(Flow::Quit),
            "\\help" | "\\?" => println!("{HELP}"),
            "\\d" => match rest.first() {
                None => {
                    let v = json!({
                        "columns": [{"name": "table"}, {"name": "columns"}, {"name": "description"}],
                        "rows": self.tables.iter().map(|t| json!([t.name, t.columns.len(), t.description])).collect::<Vec<_>>(),
                        "row_count": self.tables.len(),
                    });
                    let text = render_table(&v, usize::MAX);
                    self.emit(&text)?;
                }
                Some(name) => {
                    let Some(t) = self.tables.iter().find(|t| t.name == *name) else {
                        bail!("no table named {name}; \\d lists them");
                    };
                    let v = json!({
                        "columns": [{"name": "column"}, {"name": "type"}, {"name": "nullable"}, {"name": "description"}],
                        "rows": t.columns.iter().map(|c| json!([
                            c.name,
                            c.data_type,
                            if c.nullable { "" } else { "not null" },
                            c.description.clone().unwrap_or_default(),
                        ])).collect::<Vec<_>>(),
                        "row_count": t.columns.len(),
                    });
                    let mut text = format!("Table \"{}\"\n", t.name);
                    if !t.description.is_empty() {
                        text.push_str(&format!("{}\n", t.description));
                    }
                    text.push_str(&render_table(&v, usize::MAX));
                    self.emit(&text)?;
                }
            },
            "\\format" => match rest.first() {
                Some(f) if matches!(*f, "table" | "csv" | "json") => {
                    self.output.format = f.to_string();
                }
                _ => bail!("\\format table|csv|json"),
            },
            "\\x" => {
                self.expanded = on_off(rest.first().copied(), self.expanded, "\\x")?;
                eprintln!(
                    "Expanded display is {}.",
                    if self.expanded { "on" } else { "off" }
                );
            }
            "\\timing" => {
                self.timing = on_off(rest.first().copied(), self.timing, "\\timing")?;
                eprintln!("Timing is {}.", if self.timing { "on" } else { "off" });
            }
            "\\known_at" => match rest.first() {
                Some(&"off") | None => self.known_at = None,
                Some(t) => self.known_at = Some(t.to_string()),
            },
            "\\o" => match rest.first() {
                None => self.out_file = None,
                Some(path) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("opening {path}"))?;
                    self.out_file = Some((PathBuf::from(path), file));
                }
            },
            "\\i" | "\\include" => {
                let Some(path) = rest.first() else {
                    bail!("\\i FILE");
                };
                if self.depth >= MAX_INCLUDE_DEPTH {
                    bail!(
                        "\\i {path}: files include each other more than {MAX_INCLUDE_DEPTH} deep"
                    );
                }
                self.depth += 1;
                let ran = Box::pin(self.file(Path::new(path))).await;
                self.depth -= 1;
                return ran;
            }
            "\\reports" => {
                let v = json!({
                    "columns": [{"name": "report"}, {"name": "标题"}, {"name": "title"}, {"name": "parameters"}],
                    "rows": careledger_warehouse::reports::catalog().iter().map(|r| json!([
                        r.name,
                        r.title_zh,
                        r.title_en,
                        r.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                    ])).collect::<Vec<_>>(),
                    "row_count": careledger_warehouse::reports::catalog().len(),
                });
                let text = render_table(&v, usize::MAX);
                self.emit(&text)?;
            }
            "\\report" => {
                let Some(name) = rest.first() else {
                    bail!("\\report NAME k=v …");
                };
                let params: Vec<String> = rest[1..].iter().map(|s| s.to_string()).collect();
                let mut params = parse_params(&params)?;
                if let Some(k) = &self.known_at {
                    params.push(("known_at".into(), k.clone()));
                }
                let started = std::time::Instant::now();
                let body = self
                    .backend
                    .report(name, &params, self.output.wire_format()?)
                    .await?;
                self.show(&body)?;
                self.timed(started);
            }
            other => bail!("unknown command {other}; \\help lists them"),
        }
        Ok(Flow::Continue)
    }

    /// Takes one line of input: a backslash command (at the start of a statement) runs at
    /// once; other lines gather in `buffer` until one ends with `;`.
    async fn line(&mut self, line: &str, buffer: &mut String) -> Result<Flow> {
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('\\') {
            return self.command(trimmed).await;
        }
        if buffer.is_empty() && (trimmed.is_empty() || trimmed.starts_with("--")) {
            return Ok(Flow::Continue);
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(line);
        if trimmed.ends_with(';') {
            let statement = std::mem::take(buffer);
            let sql = statement.trim().trim_end_matches(';').trim();
            if !sql.is_empty() {
                self.statement(sql).await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Runs the statements and commands of a file, stopping at the first that fails (the
    /// error names the file and line). A last statement without `;` runs too.
    pub(crate) async fn file(&mut self, path: &Path) -> Result<Flow> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut buffer = String::new();
        let mut first_line = 1;
        for (n, line) in text.lines().enumerate() {
            if buffer.is_empty() {
                first_line = n + 1;
            }
            match self.line(line, &mut buffer).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => return Ok(Flow::Quit),
                Err(e) => return Err(e.context(format!("{}:{first_line}", path.display()))),
            }
        }
        let rest = buffer.trim().to_string();
        if !rest.is_empty() {
            self.statement(rest.trim_end_matches(';'))
                .await
                .with_context(|| format!("{}:{first_line}", path.display()))?;
        }
        Ok(Flow::Continue)
    }
}

fn on_off(word: Option<&str>, now: bool, cmd: &str) -> Result<bool> {
    match word {
        None => Ok(!now),
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => bail!("{cmd} on|off, not {other:?}"),
    }
}

/// Runs the shell until `\q` or end of input. Timing is on when a person types (standard
/// input is a terminal), off when statements are piped in.
pub(crate) async fn run(mut session: Session) -> Result<()> {
    let completion: Vec<(String, Vec<String>)> = session
        .tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.columns.iter().map(|c| c.name.clone()).collect(),
            )
        })
        .collect();
    let mut rl: Editor<SqlHelper, FileHistory> =
        Editor::with_config(Config::builder().auto_add_history(false).build())?;
    rl.set_helper(Some(SqlHelper::new(&completion)));
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    session.timing = std::io::stdin().is_terminal();
    eprintln!(
        "careledger SQL on {}: {} tables; \\help for commands, \\q to quit",
        session.backend.location(),
        session.tables.len()
    );
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
        let ends = buffer.is_empty() && trimmed.starts_with('\\') || trimmed.ends_with(';');
        let entry = if buffer.is_empty() {
            trimmed.to_string()
        } else {
            format!("{buffer}\n{line}").trim().to_string()
        };
        let flow = session.line(&line, &mut buffer).await;
        if ends {
            let _ = rl.add_history_entry(entry);
        }
        match flow {
            Ok(Flow::Quit) => break,
            Ok(Flow::Continue) => {}
            Err(e) => {
                buffer.clear();
                eprintln!("error: {e:#}");
            }
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
