//! The `careledger` command end to end: a real process on loopback and a temporary store.

use std::process::Command;

fn careledger() -> Command {
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
    let accepted: u64 = pushed
        .split(" rows accepted")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(accepted > 1000, "{pushed}");
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
}

/// `serve` as a real process on loopback; `sql` and `report` against it.
#[test]
fn sql_and_report_against_a_running_server() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    /// Kills the server if the test fails before its graceful stop.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Guard(
        careledger()
            .current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("careledger listening on ")
        .expect("the URL first")
        .to_string();
    let tokens =
        std::fs::read_to_string(dir.path().join("careledger-data/tokens-initial.txt")).unwrap();
    let admin = tokens
        .lines()
        .find(|l| l.starts_with("admin\t"))
        .unwrap()
        .split('\t')
        .nth(2)
        .unwrap()
        .to_string();

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

    let _ = Command::new("kill")
        .args(["-INT", &server.0.id().to_string()])
        .status();
    let status = server.0.wait().unwrap();
    assert!(status.success(), "graceful shutdown on SIGINT: {status:?}");
}
