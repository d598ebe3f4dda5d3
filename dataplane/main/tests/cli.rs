//! Goal: the key commands work as a new operator would use them. Method: run the built binary
//! in a temporary directory and check files, permissions and output.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The test watches the server process from helper threads, with deadlines.
#![allow(clippy::disallowed_methods)]

mod common;

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
    let line = serve_accepts_and_stops("serve", &[]);
    assert!(line.ends_with("backend)"), "{line}");
}

/// Goal: `--backend epoll` forces the epoll backend, and `serve` says which one it runs on.
#[test]
fn serve_backend_epoll_runs_on_epoll() {
    let line = serve_accepts_and_stops("serve-epoll", &["--backend", "epoll"]);
    assert!(line.ends_with("(epoll backend)"), "{line}");
}

/// Goal: the config file's `backend` key chooses the backend too.
#[test]
fn serve_config_key_backend_epoll_runs_on_epoll() {
    let dir = temp_dir("serve-config-backend");
    let config = dir.join("commucat.toml");
    std::fs::write(&config, "backend = \"epoll\"\n").unwrap();
    let line = serve_accepts_and_stops(
        "serve-config-backend-run",
        &["--config", config.to_str().unwrap()],
    );
    assert!(line.ends_with("(epoll backend)"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Goal: `--quic-listen` serves QUIC beside TCP, and `serve` still starts, accepts and stops
/// cleanly (the QUIC side is tested end to end in `dataplane/io/tests/quic.rs`).
#[test]
fn serve_quic_listen_starts_and_stops() {
    let line = serve_accepts_and_stops("serve-quic", &["--quic-listen", "127.0.0.1:0"]);
    assert!(line.ends_with("backend)"), "{line}");
}

/// Goal: a misspelt backend is refused before anything starts, naming the choices.
#[test]
fn serve_refuses_an_unknown_backend() {
    let dir = temp_dir("serve-badbackend");
    let out = commucat()
        .args(["serve", "--listen", "127.0.0.1:0", "--backend", "kqueue"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("auto, uring or epoll"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Goal: a closed stdout (a supervisor or script that stopped reading) does not crash `serve`:
/// it still stops cleanly on SIGTERM, although it prints as it stops. Method: read the start-up
/// lines, close the pipe, send SIGTERM, and require exit status 0 within a deadline.
#[test]
fn serve_survives_a_closed_stdout() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = temp_dir("closed-stdout");
    let mut child = common::serve_command(&dir.join("data"), 1).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("REST API at") {
        line.clear();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "serve ended early");
    }
    drop(stdout);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || done_tx.send(child.wait().unwrap()));
    let exit = done
        .recv_timeout(Duration::from_secs(20))
        .expect("serve exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `serve` with `extra` arguments on port 0, connects, stops it with SIGTERM, and returns
/// the line that says where it listens.
fn serve_accepts_and_stops(name: &str, extra: &[&str]) -> String {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = temp_dir(name);
    let data = dir.join("data");
    let mut child = common::serve_command(&data, 2).args(extra).spawn().unwrap();
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
    let (addr, listening) = loop {
        let line = lines
            .recv_timeout(deadline)
            .expect("serve prints where it listens");
        if let Some(rest) = line.strip_prefix("CommuCat listening on ") {
            break (
                rest.split_whitespace().next().unwrap().to_string(),
                line.clone(),
            );
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
    // The reader thread ends at the child's end of output; take every line it forwarded.
    let mut rest = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline) {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    listening
}

/// Goal: where io_uring cannot run, `--backend uring` refuses to start and says why and what to
/// change, while `auto` falls back to epoll and says so. Method: a real cause, not an injected
/// one: the locked-memory limit lowered below what the io_uring executors need (`ulimit -l`).
#[test]
fn serve_backend_uring_refuses_a_too_low_memlock_limit_and_auto_falls_back() {
    let dir = temp_dir("serve-memlock");
    let data = dir.join("data");
    let bin = env!("CARGO_BIN_EXE_commucat");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -l 64 && exec "$0" serve --listen 127.0.0.1:0 --no-api --backend uring --data-dir "$1""#)
        .arg(bin)
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("RLIMIT_MEMLOCK"), "says why: {stderr}");
    assert!(
        stderr.contains("ulimit -l"),
        "says what to change: {stderr}"
    );

    // `auto` under the same limit starts on epoll; `timeout` stops it with SIGTERM.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -l 64 && exec timeout --preserve-status -s TERM 2 "$0" serve --listen 127.0.0.1:0 --no-api --data-dir "$1""#)
        .arg(bin)
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("(epoll backend)"), "{stdout}");
    assert!(stdout.contains("io_uring is unavailable"), "{stdout}");
    assert!(out.status.success(), "{:?}", out.status);
    std::fs::remove_dir_all(&dir).unwrap();
}
