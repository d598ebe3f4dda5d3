//! Goal: the key commands work as a new operator would use them. Method: run the built binary
//! in a temporary directory and check files, permissions and output.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The test watches the server process from helper threads, with deadlines.
#![allow(clippy::disallowed_methods)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn commucat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_commucat"))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("commucat-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn keygen_writes_a_private_file_and_pubkey_reads_it() {
    let dir = temp_dir("keygen");
    let key = dir.join("server.key");
    let out = commucat()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let public = stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key:  "))
        .unwrap()
        .to_string();
    assert_eq!(public.len(), 64);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let content = std::fs::read_to_string(&key).unwrap();
    assert_eq!(content.trim().len(), 64);
    assert!(
        !stdout.contains(content.trim()),
        "the private key must not be printed"
    );

    let out = commucat()
        .args(["pubkey", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains(&public));

    // A second keygen refuses to overwrite without --force.
    let out = commucat()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("--force"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), content);
    let out = commucat()
        .args(["keygen", "--force", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_ne!(std::fs::read_to_string(&key).unwrap(), content);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pubkey_explains_a_bad_key_file() {
    let dir = temp_dir("badkey");
    let key = dir.join("bad.key");
    std::fs::write(&key, "not hex\n").unwrap();
    let out = commucat()
        .args(["pubkey", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("64 hex digits")
    );
    let missing = dir.join("missing.key");
    let out = commucat()
        .args(["pubkey", "--key"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("cannot read")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_lists_the_commands() {
    let out = commucat().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("keygen") && text.contains("pubkey"));
}

/// Goal: `serve` starts on a fresh data directory (creating the key), accepts TCP connections,
/// and stops cleanly on SIGTERM. Method: run the binary on port 0, read where it listens from
/// its output, connect, send SIGTERM, and wait for a clean exit, each step with a deadline.
#[test]
fn serve_starts_accepts_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = temp_dir("serve");
    let data = dir.join("data");
    let mut child = commucat()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let deadline = Duration::from_secs(20);
    let addr = loop {
        let line = lines
            .recv_timeout(deadline)
            .expect("serve prints where it listens");
        if let Some(rest) = line.strip_prefix("CommuCat listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let key_mode = std::fs::metadata(data.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || done_tx.send(child.wait().unwrap()));
    let exit = done
        .recv_timeout(deadline)
        .expect("serve exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    drop(stream);
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
