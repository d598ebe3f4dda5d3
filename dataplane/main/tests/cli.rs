//! Goal: the key commands work as a new operator would use them. Method: run the built binary
//! in a temporary directory and check files, permissions and output.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
