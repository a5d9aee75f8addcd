//! What the process leaves for other local users: store and state files private whatever the
//! umask; no token in `--help`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Server, careledger};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

/// `careledger …` run by `sh` after `umask 000`.
fn under_umask_000(args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000; exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_careledger"))
        .args(args);
    c
}

/// Started with umask 000 (every file would be world-readable, every directory 0777), `serve`,
/// the pushes it stores, `token create` and `maintain` leave no file readable and no
/// directory open by group or others: the state and store directories are 0700.
#[cfg(unix)]
#[test]
fn store_and_state_files_are_private_under_any_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(
        dir.path(),
        under_umask_000(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "store",
            "--state-dir",
            "state/nested",
        ]),
    );
    server.data = dir.path().join("state/nested");
    let nd = dir.path().join("women.ndjson");
    let id = careledger_model::ResidentId::synthesize(
        "450123",
        chrono::NaiveDate::from_ymd_opt(1980, 5, 6).unwrap(),
        2,
    );
    std::fs::write(
        &nd,
        format!(
            "{{\"record_id\":\"w-1\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"{}\",\"region_code\":\"450123100201\"}}\n{{\"record_id\":\"w-2\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"{}\",\"region_code\":\"999\"}}\n",
            id.as_str(),
            id.as_str()
        ),
    )
    .unwrap();
    let out = careledger()
        .args(["push", "--table", "women", "--server", &server.url])
        .args(["--token", &server.token("civil_affairs")])
        .args([
            "--rejects",
            dir.path().join("rejects.csv").to_str().unwrap(),
        ])
        .arg(&nd)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 rows accepted, 1 rejected"), "{stdout}");
    server.stop();
    let state = dir
        .path()
        .join("state/nested")
        .to_str()
        .unwrap()
        .to_string();
    let store = dir.path().join("store").to_str().unwrap().to_string();
    for args in [
        vec![
            "token",
            "--state-dir",
            &state,
            "create",
            "x",
            "--role",
            "analyst",
        ],
        vec![
            "maintain",
            "--store",
            &store,
            "--retain-hours",
            "0",
            "--force",
        ],
    ] {
        let out = under_umask_000(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut paths = Vec::new();
    for top in ["store", "state"] {
        let top = dir.path().join(top);
        paths.push(top.clone());
        walk(&top, &mut paths);
    }
    let kinds = |ext: &str| {
        paths
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .count()
    };
    assert!(
        kinds(".parquet") >= 3 && kinds(".json") >= 8 && kinds("pseudonym.key") == 1,
        "data, rejects, logs, checkpoints and the secret were written: {paths:?}"
    );
    for p in &paths {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", p.display());
        } else {
            assert_eq!(
                mode & 0o077,
                0,
                "{} is {mode:o}: open to other users",
                p.display()
            );
        }
    }
}

/// `--help` shows that a token may come from `CARELEDGER_TOKEN`, never its value.
#[test]
fn help_does_not_print_the_token_from_the_environment() {
    for command in [["sql", "--help"], ["report", "--help"], ["push", "--help"]] {
        let out = careledger()
            .args(command)
            .env("CARELEDGER_TOKEN", "secret-value")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command:?}");
        assert!(text.contains("CARELEDGER_TOKEN"), "{command:?}: {text}");
        assert!(!text.contains("secret-value"), "{command:?}: {text}");
    }
}
