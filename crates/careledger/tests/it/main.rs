//! The `careledger` command end to end: a real process on loopback and a temporary store.

use std::process::Command;

mod crash;
mod privacy;
mod push_sql;
mod sql_limits;
mod tokens;

/// The `N` of "… N rows accepted …" in a push summary (`demo` and `push` print one).
pub(crate) fn rows_accepted(summary: &str) -> usize {
    summary
        .split(" rows accepted")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'N rows accepted' in {summary}"))
}

pub(crate) fn careledger() -> Command {
    Command::new(env!("CARGO_BIN_EXE_careledger"))
}

#[test]
fn demo_pushes_a_simulated_history_and_prints_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = careledger()
        .current_dir(dir.path())
        .args([
            "demo",
            "--women",
            "150",
            "--counties",
            "450123",
            "--listen",
            "127.0.0.1:0",
            "--exit",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("careledger listening on http://127.0.0.1:"),
        "{stdout}"
    );
    let pushed = stdout
        .lines()
        .find(|l| l.starts_with("pushed "))
        .expect("a push summary");
    assert!(rows_accepted(pushed) > 1000, "{pushed}");
    assert!(stdout.contains("Stock on 2024-12-31"), "{stdout}");
    assert!(
        stdout.contains("南宁市"),
        "隆安县 rolls up to 南宁市: {stdout}"
    );
    assert!(stdout.contains("Coverage by measure"), "{stdout}");
    // First start created the secret (0600) and the initial tokens; nothing holds a raw ID.
    let data = dir.path().join("careledger-data");
    let key = std::fs::metadata(data.join("pseudonym.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }
    assert!(data.join("tokens-initial.txt").exists());
    assert!(data.join("women").join("_delta_log").is_dir());
}

#[test]
fn token_create_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let out = careledger()
        .args([
            "token",
            "--state-dir",
            state,
            "create",
            "county-a",
            "--role",
            "analyst",
            "--scope",
            "450123",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("cl_"), "{token}");
    let list = careledger()
        .args(["token", "--state-dir", state, "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.contains("county-a\tanalyst\t450123\tactive"), "{list}");
    assert!(!list.contains(&token), "tokens are never shown again");
    let stored = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
    assert!(!stored.contains(&token), "only the hash is stored");
    assert!(
        careledger()
            .args(["token", "--state-dir", state, "revoke", "county-a"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let list = careledger()
        .args(["token", "--state-dir", state, "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("county-a\tanalyst\t450123\trevoked"));
    let out = careledger()
        .args([
            "token",
            "--state-dir",
            state,
            "create",
            "temp",
            "--role",
            "dashboard",
        ])
        .args(["--expires", "2020-01-01"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = careledger()
        .args(["token", "--state-dir", state, "list"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout)
            .contains("temp\tdashboard\t\texpired 2020-01-01 00:00:00 +08:00"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
    let out = careledger()
        .args([
            "token",
            "--state-dir",
            state,
            "create",
            "t2",
            "--role",
            "analyst",
        ])
        .args(["--expires", "soon"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expires"));
    let bad = careledger()
        .args([
            "token",
            "--state-dir",
            state,
            "create",
            "x",
            "--role",
            "source:nobody",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role"));
    // A scope must name real regions at its own level: 450100 is 南宁市 written as a county
    // code (it would see nothing), 4599 is no region, 45x no code.
    for (scope, says) in [
        ("450100", "use --scope 4501"),
        ("4599", "no Guangxi region"),
        ("45x", "region code prefix"),
    ] {
        let out = careledger()
            .args([
                "token",
                "--state-dir",
                state,
                "create",
                "s",
                "--role",
                "analyst",
            ])
            .args(["--scope", scope])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{scope}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{scope}: {err}");
    }
}

/// `careledger serve` as a child process on loopback and a temporary store; killed if a test
/// fails before its graceful stop.
pub(crate) struct Server {
    pub(crate) child: std::process::Child,
    pub(crate) url: String,
    pub(crate) data: std::path::PathBuf,
}

impl Server {
    pub(crate) fn start(dir: &std::path::Path) -> Server {
        Server::start_with(dir, &[])
    }

    pub(crate) fn start_with(dir: &std::path::Path, extra: &[&str]) -> Server {
        let mut command = careledger();
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            // The PostgreSQL and Flight SQL doors on ports of their own (tests run at once).
            .args([
                "--pg-listen",
                "127.0.0.1:0",
                "--flight-listen",
                "127.0.0.1:0",
            ])
            .args(extra);
        Server::spawn(dir, command)
    }

    /// Runs `command` (a `serve`, perhaps wrapped) in `dir` and waits for its address.
    pub(crate) fn spawn(dir: &std::path::Path, mut command: Command) -> Server {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        // The server's log, kept beside the store for a failing test to show.
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::fs::File::create(dir.join(format!("server-{n}.log"))).unwrap();
        let mut child = command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first
            .strip_prefix("careledger listening on ")
            .unwrap_or_else(|| panic!("the URL first, got {first:?}"))
            .to_string();
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url,
            data: dir.join("careledger-data"),
        }
    }

    /// A token from the first start's `tokens-initial.txt` (`admin`, or a source's code).
    pub(crate) fn token(&self, name: &str) -> String {
        let tokens = std::fs::read_to_string(self.data.join("tokens-initial.txt")).unwrap();
        tokens
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("no initial token {name}"))
            .split('\t')
            .nth(2)
            .unwrap()
            .to_string()
    }

    /// SIGINT, and a clean exit.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "graceful shutdown on SIGINT: {status:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` as a real process on loopback; `sql` and `report` against it.
#[test]
fn sql_and_report_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let (url, admin) = (server.url.clone(), server.token("admin"));

    let out = careledger()
        .args([
            "sql",
            "SELECT count(*) AS women FROM women",
            "--server",
            &url,
            "--token",
            &admin,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("women"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "0"), "{stdout}");

    let out = careledger()
        .args([
            "report",
            "stock",
            "--param",
            "as_of=2024-12-31",
            "--param",
            "level=city",
            "--format",
            "csv",
            "--server",
            &url,
            "--token",
            &admin,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("region_code,region_name,women"));

    // Refusals come back as the server's message.
    let out = careledger()
        .args([
            "sql",
            "DROP TABLE women",
            "--server",
            &url,
            "--token",
            &admin,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = careledger()
        .args([
            "report",
            "stock",
            "--param",
            "as_of=yesterday",
            "--server",
            &url,
            "--token",
            &admin,
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("as_of"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.stop();
}

/// `serve --config FILE`: the file gives what flags and environment leave unset; a misspelt
/// key is named.
#[test]
fn serve_reads_a_config_file_and_names_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("careledger.toml"),
        "store = \"./ledger-store\"\ncommit_window_ms = 5\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    // --listen on the command line wins over the file's port 1.
    let mut server = Server::start_with(dir.path(), &["--config", "careledger.toml"]);
    assert!(!server.url.ends_with(":1"), "{}", server.url);
    assert!(dir.path().join("ledger-store/women/_delta_log").is_dir());
    server.data = dir.path().join("ledger-store");
    assert!(!server.token("admin").is_empty());
    server.stop();

    std::fs::write(dir.path().join("bad.toml"), "lisen = \"127.0.0.1:0\"\n").unwrap();
    let out = careledger()
        .current_dir(dir.path())
        .args(["serve", "--config", "bad.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lisen"), "{stderr}");
}

/// Shell completions and man pages come from the same definitions as `--help`.
#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = careledger().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("careledger") && text.contains("derive"),
            "{shell}: {text}"
        );
    }
    let out = careledger().args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let out = careledger().arg("man").arg(&man).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(man.join("careledger.1")).unwrap();
    assert!(page.contains(".TH careledger"), "{page}");
    let push = std::fs::read_to_string(man.join("careledger-push.1")).unwrap();
    assert!(push.contains("resume"), "{push}");
}
