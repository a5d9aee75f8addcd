//! `push`, `sql` (server, local store, interactive shell), `report` and `maintain`, each as a
//! real process against a real server process or store directory.

use std::io::Write;
use std::process::{Output, Stdio};

use careledger_model::ResidentId;
use chrono::NaiveDate;

use crate::{Server, careledger, rows_accepted};

const VILLAGE: &str = "450123100201";

fn id(n: u32) -> String {
    let birth =
        NaiveDate::from_ymd_opt(1975, 1, 1).unwrap() + chrono::TimeDelta::days(i64::from(n));
    ResidentId::synthesize("450123", birth, 2)
        .as_str()
        .to_string()
}

/// The same ID with a wrong check digit.
fn bad_check_digit(n: u32) -> String {
    let good = id(n);
    let last = good.chars().last().unwrap();
    let wrong = if last == '0' { '1' } else { '0' };
    format!("{}{wrong}", &good[..17])
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// The single number a one-cell table answer prints.
fn single_number(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no number in {stdout}"))
}

#[test]
fn push_files_with_invalid_rows_then_query_server_and_local_store_then_maintain() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let source = server.token("civil_affairs");
    let admin = server.token("admin");

    // 30 valid women and 2 invalid ones (bad check digit on file line 12, unknown village on
    // line 25) in CSV; one record ID holds a quoted comma, and a code a quoted line break (a
    // spreadsheet cell's; trimmed: a record ID may hold no line break).
    let mut csv = String::from(
        "source,record_id,record_version,op,id_number,region_code,ethnicity,marital_status\n",
    );
    let mut line = 1;
    for n in 0..32u32 {
        line += 1;
        let (idn, village) = match line {
            12 => (bad_check_digit(n), VILLAGE.to_string()),
            25 => (id(n), "450123999999".to_string()),
            _ => (id(n), VILLAGE.to_string()),
        };
        let (record, ethnicity) = if n == 3 {
            ("\"w-3, quoted\"".to_string(), "\"01\n\"")
        } else {
            (format!("w-{n}"), "01")
        };
        if n == 3 {
            line += 1;
        }
        csv.push_str(&format!(
            "civil_affairs,{record},1,upsert,{idn},{village},{ethnicity},20\n"
        ));
    }
    let csv_path = dir.path().join("women.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    // NDJSON: 5 valid, one line that is not JSON (line 3), one bad check digit (line 7).
    let mut nd = String::new();
    for n in 100..107u32 {
        let idn = if n == 105 { bad_check_digit(n) } else { id(n) };
        if n == 102 {
            nd.push_str("{\"source\": \"civil_affairs\", oops\n");
        }
        if n != 102 {
            nd.push_str(&format!(
                "{{\"source\":\"civil_affairs\",\"record_id\":\"w-{n}\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"{idn}\",\"region_code\":\"{VILLAGE}\"}}\n"
            ));
        }
    }
    let nd_path = dir.path().join("more.ndjson");
    std::fs::write(&nd_path, &nd).unwrap();
    let rejects = dir.path().join("rejects.csv");

    let push = |extra: &[&str]| {
        careledger()
            .args(["push", "--table", "women", "--batch-rows", "7"])
            .args(["--server", &server.url, "--token", &source])
            .args(["--rejects", rejects.to_str().unwrap()])
            .args(extra)
            .arg(&csv_path)
            .arg(&nd_path)
            .output()
            .unwrap()
    };
    let stdout = ok(push(&[]));
    assert!(
        stdout.contains("35 rows accepted, 4 rejected"),
        "30 + 5 valid; 2 + 2 invalid: {stdout}"
    );
    assert!(stdout.contains("0 batches already sent"), "{stdout}");
    let listed = std::fs::read_to_string(&rejects).unwrap();
    assert!(listed.starts_with("\u{feff}file,line,record,field,code,message\n"));
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{listed}");
    let csv_name = csv_path.display().to_string();
    let nd_name = nd_path.display().to_string();
    assert!(
        rows[0].starts_with(&format!(
            "{csv_name},12,10,id_number,id_number.check_digit,"
        )),
        "{listed}"
    );
    assert!(
        rows[1].starts_with(&format!("{csv_name},25,23,region_code,")),
        "{listed}"
    );
    assert!(
        rows[2].starts_with(&format!("{nd_name},3,3,,row.malformed_json,")),
        "{listed}"
    );
    assert!(
        rows[3].starts_with(&format!("{nd_name},6,6,id_number,id_number.check_digit,")),
        "{listed}"
    );

    // Pushing the same files again stores nothing twice: every batch is answered from its
    // receipt.
    let stdout = ok(push(&[]));
    assert!(stdout.contains("0 rows accepted"), "{stdout}");
    assert!(stdout.contains("6 batches already sent"), "{stdout}");
    let count = |args: &[&str]| {
        single_number(&ok(careledger()
            .args(["sql", "SELECT count(*) AS n FROM women"])
            .args(args)
            .output()
            .unwrap()))
    };
    assert_eq!(count(&["--server", &server.url, "--token", &admin]), 35);

    // Only source tokens push: the refused batch is named and the exit status says so.
    let out = careledger()
        .args(["push", "--table", "women", "--server", &server.url])
        .args(["--token", &admin])
        .args(["--rejects", dir.path().join("r2.csv").to_str().unwrap()])
        .arg(&nd_path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("1 of 1 batches were not stored"),
        "{stderr}"
    );
    let r2 = std::fs::read_to_string(dir.path().join("r2.csv")).unwrap();
    assert!(r2.contains("batch.failed"), "{r2}");
    assert!(r2.contains("403"), "{r2}");
    assert!(
        r2.contains("nothing stored from records 1\u{2013}7: "),
        "{r2}"
    );
    assert!(!r2.contains("..="), "written for people, not in Rust: {r2}");
    // Another source's token: every row is refused as not its own, and listed.
    let out = careledger()
        .args(["push", "--table", "women", "--server", &server.url])
        .args(["--token", &server.token("health")])
        .args(["--rejects", dir.path().join("r3.csv").to_str().unwrap()])
        .arg(&nd_path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    let r3 = std::fs::read_to_string(dir.path().join("r3.csv")).unwrap();
    assert!(
        r3.matches("source.not_token_source").count() == 6,
        "{stdout}\n{stderr}\n{r3}"
    );

    // More invalid rows in one batch than a receipt keeps (100): the reply lists them all.
    let mut many = String::new();
    for n in 200..360u32 {
        let idn = if n < 350 { bad_check_digit(n) } else { id(n) };
        many.push_str(&format!(
            "{{\"source\":\"civil_affairs\",\"record_id\":\"m-{n}\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"{idn}\",\"region_code\":\"{VILLAGE}\"}}\n"
        ));
    }
    let many_path = dir.path().join("many.ndjson");
    std::fs::write(&many_path, &many).unwrap();
    let r4 = dir.path().join("r4.csv");
    let stdout = ok(careledger()
        .args(["push", "--table", "women", "--server", &server.url])
        .args(["--token", &source, "--batch-rows", "1000"])
        .args(["--rejects", r4.to_str().unwrap()])
        .arg(&many_path)
        .output()
        .unwrap());
    assert!(
        stdout.contains("10 rows accepted, 150 rejected"),
        "{stdout}"
    );
    let listed = std::fs::read_to_string(&r4).unwrap();
    assert_eq!(
        listed.matches("id_number.check_digit").count(),
        150,
        "{listed}"
    );
    assert!(listed.contains(&format!("{},150,150,id_number", many_path.display())));

    // A file type it cannot read, or a workbook that is not one, is refused before anything
    // is sent.
    for (name, bytes, says) in [
        ("women.xls", &b"\xd0\xcf\x11\xe0"[..], "unknown file type"),
        ("women.xlsx", &b"PK"[..], "not a readable .xlsx workbook"),
    ] {
        let odd = dir.path().join(name);
        std::fs::write(&odd, bytes).unwrap();
        let out = careledger()
            .args(["push", "--table", "women", "--server", &server.url])
            .args(["--token", &source])
            .arg(&odd)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && text(&out).1.contains(says),
            "{name}: {:?}",
            text(&out)
        );
    }

    server.stop();

    // The same answers straight from the store directory, with the server stopped.
    let store = server.data.to_str().unwrap().to_string();
    assert_eq!(count(&["--store", &store]), 45);
    let stock = ok(careledger()
        .args(["report", "stock", "--store", &store, "--format", "csv"])
        .args(["--param", "as_of=2024-12-31", "--param", "level=county"])
        .output()
        .unwrap());
    assert!(
        stock.starts_with("region_code,region_name,women"),
        "{stock}"
    );
    let out = careledger()
        .args([
            "sql",
            "SELECT 1",
            "--store",
            dir.path().join("nowhere").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        text(&out).1.contains("no careledger store at"),
        "{:?}",
        text(&out)
    );
    let out = careledger()
        .args(["sql", "SELECT 1", "--server", "http://127.0.0.1:9"])
        .env_remove("CARELEDGER_TOKEN")
        .output()
        .unwrap();
    assert!(text(&out).1.contains("give --token"), "{:?}", text(&out));
    let out = careledger()
        .args(["sql", "DELETE FROM women", "--store", &store])
        .output()
        .unwrap();
    assert!(!out.status.success(), "local SQL is read-only too");

    // maintain: the 7 small women files become one; answers are unchanged.
    let women_files = |store: &str| {
        std::fs::read_dir(std::path::Path::new(store).join("women"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".parquet")
            })
            .count()
    };
    assert!(women_files(&store) >= 2, "several commits, several files");
    let report = ok(careledger()
        .args([
            "maintain",
            "--store",
            &store,
            "--retain-hours",
            "0",
            "--force",
        ])
        .output()
        .unwrap());
    assert!(report.contains("maintained 18 tables"), "{report}");
    let women_line = report.lines().find(|l| l.starts_with("women ")).unwrap();
    assert!(women_line.contains("now 1 files"), "{report}");
    assert_eq!(women_files(&store), 1, "vacuum deleted the replaced files");
    assert!(
        std::path::Path::new(&store)
            .join("women/_delta_log/_last_checkpoint")
            .exists()
    );
    assert_eq!(count(&["--store", &store]), 45);
}

#[test]
fn the_shell_runs_statements_and_commands_and_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let admin = server.token("admin");
    let history = dir.path().join("history");
    let included = dir.path().join("included.sql");
    std::fs::write(
        &included,
        "-- a comment line\nSELECT 'from the file' AS origin;\n",
    )
    .unwrap();
    let saved = dir.path().join("saved.txt");
    let input = format!(
        "\\d\n\
         \\d status_episodes\n\
         SELECT count(*) AS women\n  FROM women;\n\
         SELECT nonsense FROM nowhere;\n\
         SELECT NULL AS nothing, '那𡌶村委会' AS village;\n\
         \\x\n\
         SELECT 7 AS seven, 'x' AS letter;\n\
         \\x off\n\
         \\timing on\n\
         \\i {}\n\
         \\timing off\n\
         \\o {}\n\
         SELECT 'kept' AS saved;\n\
         \\o\n\
         \\reports\n\
         \\format csv\n\
         SELECT '台账' AS word, 2 AS n;\n\
         \\report stock as_of=2024-12-31 level=city\n\
         \\q\n",
        included.display(),
        saved.display()
    );
    let run = |args: &[&str]| {
        let mut child = careledger()
            .arg("sql")
            .args(args)
            .env("CARELEDGER_HISTORY", &history)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    for args in [
        vec!["--server", server.url.as_str(), "--token", admin.as_str()],
        vec!["--store", server.data.to_str().unwrap()],
    ] {
        let _ = std::fs::remove_file(&saved);
        let out = run(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stderr.starts_with("careledger SQL on ") && !stdout.contains("careledger SQL on"),
            "the banner goes to stderr, answers alone to stdout: {stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(" status_episodes ") && stdout.contains("Her stays in the ledger"),
            "\\d lists tables with descriptions: {stdout}"
        );
        let described = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("start_date"))
            .unwrap_or_else(|| panic!("\\d status_episodes: {stdout}"));
        assert!(
            described.contains("Date32")
                && described.contains("not null")
                && described.contains("First day in the ledger"),
            "\\d NAME shows type, nullability and description: {described}"
        );
        assert!(
            stdout.contains(" women\n-------"),
            "a table answer: {stdout}"
        );
        assert!(
            stderr.contains("error:") && stderr.contains("nowhere"),
            "a bad statement is reported on stderr: {stderr}"
        );
        let null_line = stdout
            .lines()
            .find(|l| l.contains("那𡌶村委会"))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(null_line.contains("(null)"), "NULL is visible: {null_line}");
        assert!(
            stdout.contains("-[ RECORD 1 ]") && stdout.contains("seven  | 7\nletter | x\n"),
            "\\x shows one block per record: {stdout}"
        );
        assert!(
            stdout.contains(" from the file"),
            "\\i runs the file: {stdout}"
        );
        assert!(
            stderr.contains("Time: ") && !stdout.contains("Time: "),
            "\\timing reports on stderr: {stderr}"
        );
        let kept = std::fs::read_to_string(&saved).unwrap();
        assert!(
            kept.contains(" kept") && !stdout.contains(" kept"),
            "\\o sends answers to the file: {kept}"
        );
        assert!(
            stdout.contains("台账在册人数") && stdout.contains("Stock: women in the ledger"),
            "\\reports shows Chinese and English titles: {stdout}"
        );
        assert!(
            stdout.contains("word,n\n台账,2\n"),
            "\\format csv: {stdout}"
        );
        assert!(
            stdout.contains("region_code,region_name,women"),
            "\\report: {stdout}"
        );
    }
    let kept = std::fs::read_to_string(&history).unwrap();
    assert!(kept.contains("SELECT '台账' AS word, 2 AS n;"), "{kept}");
    server.stop();
}

/// `careledger sql -f FILE` runs a file's statements and commands; the first that fails stops
/// it with the file and line named and a failing exit status. A local store runs SQL under
/// the same engine limits as the server (a query too deeply nested is refused).
#[test]
fn sql_runs_a_file_and_stops_at_its_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let admin = server.token("admin");
    let good = dir.path().join("good.sql");
    std::fs::write(
        &good,
        "\\format csv\nSELECT 1 AS one;\n\nSELECT\n  2 AS two\n;\nSELECT 3 AS three",
    )
    .unwrap();
    let bad = dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "SELECT 1 AS before;\nSELECT nonsense\n  FROM nowhere;\nSELECT 3 AS after;\n",
    )
    .unwrap();
    let store = server.data.to_str().unwrap().to_string();
    for target in [
        vec!["--server", server.url.as_str(), "--token", admin.as_str()],
        vec!["--store", store.as_str()],
    ] {
        let out = careledger()
            .args(["sql", "-f", good.to_str().unwrap()])
            .args(&target)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_eq!(stdout, "one\n1\ntwo\n2\nthree\n3\n", "{stderr}");
        let out = careledger()
            .args(["sql", "-f", bad.to_str().unwrap()])
            .args(&target)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "a failing file fails: {stdout}");
        assert!(
            stdout.contains("before") && !stdout.contains("after"),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("{}:2", bad.display())) && stderr.contains("nowhere"),
            "the error names file and line: {stderr}"
        );
    }
    let deep = format!("SELECT {}1", "1 + ".repeat(600));
    let out = careledger()
        .args(["sql", "--store", &store, &deep])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("nests expressions more than 500 deep"),
        "the local store applies the engine's shape limit: {stderr}"
    );
    server.stop();
}

/// A shell left idle past the server's header timeout (10 s) runs its next statement: the
/// connection the server closed meanwhile is not reused.
#[test]
fn an_idle_shell_runs_its_next_statement() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let admin = server.token("admin");
    let mut child = careledger()
        .args([
            "sql",
            "--server",
            server.url.as_str(),
            "--token",
            admin.as_str(),
        ])
        .env("CARELEDGER_HISTORY", dir.path().join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"SELECT 1 AS first_answer;\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(12));
    stdin
        .write_all(b"SELECT 2 AS second_answer;\n\\q\n")
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("first_answer"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("second_answer") && !stderr.contains("error"),
        "the statement after 12 s idle: {stdout}\n{stderr}"
    );
    server.stop();
}

/// `simulate` writes the departments' rows per source and table; `push` sends one of them with
/// that source's token, and the valid rows land.
#[test]
fn simulated_files_push_with_their_sources_token() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    let out = ok(careledger()
        .args([
            "simulate",
            "--women",
            "60",
            "--counties",
            "450123",
            "--seed",
            "3",
        ])
        .arg("--out")
        .arg(&sim)
        .output()
        .unwrap());
    assert!(out.contains("women.ndjson: "), "{out}");
    // Every file lies under a known source and is named after a table.
    let mut women_file = None;
    for source in std::fs::read_dir(&sim).unwrap() {
        let source = source.unwrap();
        let name = source.file_name().to_string_lossy().to_string();
        assert!(
            careledger_model::vocabulary()
                .list("sources")
                .codes
                .iter()
                .any(|c| c.code == name),
            "{name}"
        );
        for f in std::fs::read_dir(source.path()).unwrap() {
            let f = f.unwrap().path();
            if f.file_name().unwrap() == "women.ndjson" {
                women_file = Some((name.clone(), f));
            }
        }
    }
    let (source, path) = women_file.expect("some source reports women");
    let rows = std::fs::read_to_string(&path).unwrap().lines().count();
    let mut server = Server::start(dir.path());
    let stdout = ok(careledger()
        .args(["push", "--table", "women", "--server", &server.url])
        .args(["--token", &server.token(&source)])
        .args(["--rejects", dir.path().join("r.csv").to_str().unwrap()])
        .arg("--gzip")
        .arg(&path)
        .output()
        .unwrap());
    let accepted = rows_accepted(&stdout);
    assert!(accepted > 0 && accepted <= rows, "{stdout}");
    server.stop();
}

/// An integrator's recovery: the client is killed (SIGKILL) mid-push; `push --resume` asks the
/// server what this source already stored, sends only the rest, and the store ends with
/// exactly the rows of the file, each once.
#[test]
fn a_push_killed_mid_way_resumes_and_ends_with_exactly_the_rows_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let source = server.token("civil_affairs");
    let admin = server.token("admin");
    let file = dir.path().join("women.ndjson");
    let mut body = String::new();
    for n in 0..600u32 {
        body.push_str(&format!(
            "{{\"record_id\":\"w-{n}\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"{}\",\"region_code\":\"{VILLAGE}\",\"marital_status\":\"20\"}}\n",
            id(n)
        ));
    }
    std::fs::write(&file, body).unwrap();
    let args = |resume: bool| {
        let mut a = vec![
            "push".to_string(),
            "--table".into(),
            "women".into(),
            "--server".into(),
            server.url.clone(),
            "--batch-rows".into(),
            "10".into(),
            "--parallel".into(),
            "1".into(),
            "--rejects".into(),
            dir.path().join("rejects.csv").display().to_string(),
        ];
        if resume {
            a.push("--resume".into());
        }
        a.push(file.display().to_string());
        a
    };
    let count = || {
        single_number(&ok(careledger()
            .args(["sql", "--server", &server.url, "--token", &admin])
            .arg("SELECT count(*) FROM raw_women")
            .output()
            .unwrap()))
    };
    let mut child = careledger()
        .args(args(false))
        .env("CARELEDGER_TOKEN", &source)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once part of the 60 batches is stored.
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let stored = count();
        if stored >= 50 || started.elapsed().as_secs() > 60 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = count();
    assert!(
        before > 0 && before < 600,
        "killed mid-way: {before} rows stored"
    );

    let out = ok(careledger()
        .args(args(true))
        .env("CARELEDGER_TOKEN", &source)
        .output()
        .unwrap());
    let resumed: u64 = out
        .split(", ")
        .find(|p| p.contains("found stored and not sent again"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume count in {out}"));
    assert!(resumed >= before / 10, "{out}");
    let distinct = single_number(&ok(careledger()
        .args(["sql", "--server", &server.url, "--token", &admin])
        .arg("SELECT count(DISTINCT record_id) FROM raw_women")
        .output()
        .unwrap()));
    assert_eq!(count(), 600, "every row of the file, once");
    assert_eq!(distinct, 600);
}

/// `careledger push FILE.xlsx`: a department's workbook with Chinese headers goes whole; the
/// server maps it through the source's profile, and a row refused for an ID number Excel made
/// a number is listed at its sheet row.
#[test]
fn push_takes_a_workbook_with_chinese_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let source = server.token("civil_affairs");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (c, h) in [
        "序号",
        "记录编号",
        "记录版本",
        "身份证件号码",
        "居住地行政区划代码",
        "民族",
    ]
    .iter()
    .enumerate()
    {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for n in 0..3u32 {
        let r = n + 1;
        sheet.write_number(r, 0, f64::from(r)).unwrap();
        sheet.write_string(r, 1, format!("x-{n}")).unwrap();
        sheet.write_number(r, 2, 1).unwrap();
        if n == 1 {
            // What Excel does to an 18-digit number typed into a General cell.
            sheet.write_number(r, 3, 4.501231975e17).unwrap();
        } else {
            sheet.write_string(r, 3, id(200 + n)).unwrap();
        }
        sheet.write_string(r, 4, VILLAGE).unwrap();
        sheet.write_string(r, 5, "壮族").unwrap();
    }
    let path = dir.path().join("台账.xlsx");
    book.save(&path).unwrap();
    let rejects = dir.path().join("rejects.csv");
    let out = careledger()
        .args(["push", "--table", "women"])
        .args(["--server", &server.url, "--token", &source])
        .args(["--rejects", rejects.to_str().unwrap()])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = ok(out);
    assert!(stdout.contains("2 rows accepted, 1 rejected"), "{stdout}");
    let listed = std::fs::read_to_string(&rejects).unwrap();
    let row = listed.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with(&format!(
            "{},3,2,id_number,field.spreadsheet,",
            path.display()
        )),
        "sheet row 3, record 2: {listed}"
    );
    assert!(
        row.contains("Excel stored the ID number as a number"),
        "{row}"
    );
    server.stop();
}
