//! `careledger token create|revoke` against a running `careledger serve`: the server reads the
//! changed token file with the next request, and refuses every token while the file is broken.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::{Server, careledger};

/// The status of `GET /v1/reports` with `token` (one request, its own connection).
fn status(url: &str, token: &str) -> u16 {
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/reports HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Asks until the answer is `want`, for at most 2 s.
fn becomes(url: &str, token: &str, want: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = status(url, token);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got} after 2 s, want {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token_cli(state: &std::path::Path, args: &[&str]) -> String {
    let out = careledger()
        .args(["token", "--state-dir", state.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `--state-dir` is accepted after the action as well as before it.
#[test]
fn the_state_dir_flag_goes_before_or_after_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = careledger()
            .env_remove("CARELEDGER_STATE_DIR")
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let sub = dir.path().join("state");
    let sub = sub.to_str().unwrap();
    run(&[
        "token",
        "create",
        "after",
        "--role",
        "analyst",
        "--state-dir",
        sub,
    ]);
    run(&[
        "token",
        "--state-dir",
        sub,
        "create",
        "before",
        "--role",
        "analyst",
    ]);
    let listed = run(&["token", "list", "--state-dir", sub]);
    assert!(
        listed.contains("after") && listed.contains("before"),
        "{listed}"
    );
    run(&["token", "revoke", "after", "--state-dir", sub]);
    let listed = run(&["token", "list", "--state-dir", sub]);
    let after = listed.lines().find(|l| l.starts_with("after")).unwrap();
    assert!(after.contains("revoked"), "{listed}");
    // Nothing went to the default directory under the working directory.
    assert!(!std::path::Path::new(state).join("careledger-data").exists());
}

#[test]
fn token_changes_take_effect_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let (url, admin) = (server.url.clone(), server.token("admin"));
    assert_eq!(status(&url, &admin), 200);

    // Created while the server runs: accepted without a restart.
    let late = token_cli(&server.data, &["create", "late", "--role", "analyst"]);
    assert!(late.starts_with("cl_"), "{late}");
    becomes(&url, &late, 200, "a token created while the server runs");

    // Revoked while the server runs: refused from the next request on.
    token_cli(&server.data, &["revoke", "late"]);
    becomes(&url, &late, 401, "a token revoked while the server runs");
    assert_eq!(status(&url, &admin), 200, "the others still work");

    // A token file that cannot be read fails closed: every token is refused, not the ones
    // read before served on; fixed, it is read again.
    let file = server.data.join("tokens.json");
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, b"[{\"name\": ").unwrap();
    becomes(&url, &admin, 503, "a malformed token file");
    assert_eq!(status(&url, &late), 503);
    std::fs::write(&file, &good).unwrap();
    becomes(&url, &admin, 200, "the token file fixed");
    assert_eq!(status(&url, &late), 401);

    server.stop();
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("server-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        log.contains("the token file cannot be used"),
        "the broken file is logged as an error: {log}"
    );
}
