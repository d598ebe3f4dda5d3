//! Goal: a new user can do everything with the `commucat` binary alone: start the server as
//! the README says, paste its invite line into `commucat client init`, register two accounts,
//! pair a second device, befriend, send both ways, and a device that was offline receives its
//! backlog exactly once. Method: the real binary in separate profiles (one per device), the
//! `--json` output parsed and asserted; every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a test of real processes

mod common;

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Run {
    ok: bool,
    json: Vec<Value>,
    stderr: String,
}

/// `commucat client --json --profile DIR ARGS...`.
fn cli(profile: &Path, args: &[&str]) -> Run {
    cli_typed(profile, args, "")
}

/// As [`cli`], with `input` typed on stdin (then end of input).
fn cli_typed(profile: &Path, args: &[&str], input: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_commucat"))
        .arg("client")
        .arg("--profile")
        .arg(profile)
        .arg("--json")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    Run {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(profile: &Path, args: &[&str]) -> Vec<Value> {
    let run = cli(profile, args);
    assert!(run.ok, "{args:?} failed: {}", run.stderr);
    run.json
}

fn texts(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_users_pair_befriend_chat_and_an_offline_device_gets_its_backlog_once() {
    let dir = std::env::temp_dir().join(format!("commucat-cli-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = common::serve(&dir.join("data"), &[]);
    let profile = |name: &str| -> PathBuf { dir.join(name) };
    let (alice1, alice2, bob) = (profile("alice1"), profile("alice2"), profile("bob"));

    for (p, name) in [(&alice1, "laptop"), (&alice2, "phone"), (&bob, "desk")] {
        let mut args: Vec<&str> = server.invite.iter().map(String::as_str).collect();
        args.extend(["--device-name", name]);
        let init = ok(p, &args);
        assert_eq!(init[0]["device"].as_str().unwrap().len(), 32);
    }
    // Before registering, commands say what to do.
    let early = cli(&bob, &["listen", "--timeout", "1"]);
    assert!(!early.ok);
    assert!(
        early.stderr.contains("commucat client register"),
        "{}",
        early.stderr
    );

    assert_eq!(ok(&alice1, &["register", "alice"])[0]["handle"], "alice");
    assert_eq!(ok(&bob, &["register", "bob"])[0]["handle"], "bob");
    let taken = cli(&alice2, &["register", "alice"]);
    assert!(
        !taken.ok && taken.stderr.contains("choose another handle"),
        "{}",
        taken.stderr
    );

    // A second device for alice.
    let code = ok(&alice1, &["pair", "create"])[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ok(&alice2, &["pair", "claim", &code])[0]["handle"], "alice");
    let devices = ok(&alice2, &["devices", "list"]);
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(
        devices.iter().filter(|d| d["this_device"] == true).count(),
        1
    );

    // Not friends yet: sending is refused with a hint.
    let refused = cli(&alice1, &["send", "bob", "too early"]);
    assert!(
        !refused.ok && refused.stderr.contains("friends add"),
        "{}",
        refused.stderr
    );

    assert_eq!(ok(&alice1, &["friends", "add", "bob"])[0]["handle"], "bob");
    let requests = ok(&bob, &["friends", "requests"]);
    assert_eq!(requests[0]["direction"], "incoming");
    assert_eq!(requests[0]["handle"], "alice");
    ok(&bob, &["friends", "accept", "alice"]);
    assert_eq!(ok(&alice1, &["friends", "list"])[0]["handle"], "bob");

    // alice1 -> bob: to bob's device and to alice's other device (alice2, offline).
    let sent = ok(&alice1, &["send", "bob", "hi bob"]);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter()
            .all(|s| s["status"] == "stored" || s["status"] == "delivered")
    );
    let got = ok(&bob, &["listen", "--count", "1", "--timeout", "20"]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "hi bob");
    assert_eq!(got[0]["from"], "alice");

    // bob -> alice: to alice1 and alice2.
    assert_eq!(ok(&bob, &["send", "alice", "hi alice"]).len(), 2);
    let got = ok(&alice1, &["listen", "--count", "1", "--timeout", "20"]);
    assert_eq!(texts(&got), BTreeSet::from(["hi alice".to_string()]));
    assert_eq!(got[0]["from"], "bob");

    // alice2 has been offline all along; one more while it is away.
    ok(&bob, &["send", "alice", "while you were away"]);
    let backlog = ok(&alice2, &["listen", "--count", "3", "--timeout", "20"]);
    assert_eq!(
        texts(&backlog),
        BTreeSet::from([
            "hi bob".to_string(),
            "hi alice".to_string(),
            "while you were away".to_string()
        ]),
        "{backlog:?}"
    );
    assert_eq!(backlog.len(), 3, "each message once: {backlog:?}");
    let again = ok(&alice2, &["listen", "--timeout", "2"]);
    assert!(
        again.is_empty(),
        "a second listen shows nothing new: {again:?}"
    );
    // bob's and alice1's inboxes are empty too.
    assert!(ok(&bob, &["listen", "--timeout", "1"]).is_empty());

    // chat: lines typed are sent to every device of the friend; it ends at end of input once
    // the server has taken them.
    let chatted = cli_typed(&bob, &["chat", "alice"], "from chat\n");
    assert!(chatted.ok, "{}", chatted.stderr);
    assert_eq!(
        chatted.json.iter().filter(|v| v["type"] == "sent").count(),
        2
    );
    // alice1 also has bob's earlier message (sent to both of alice's devices); `--count 1`
    // still shows everything already received, since it is acknowledged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut got = Vec::new();
    while texts(&got).len() < 2 && std::time::Instant::now() < deadline {
        got.extend(ok(&alice1, &["listen", "--count", "1", "--timeout", "20"]));
    }
    assert_eq!(
        texts(&got),
        BTreeSet::from(["from chat".to_string(), "while you were away".to_string()]),
        "{got:?}"
    );
    assert_eq!(got.len(), 2, "each once: {got:?}");

    // Groups: created over REST; a group send is either taken or refused with a clear error.
    let group = ok(&alice1, &["groups", "create", "cats"])[0]["id"]
        .as_u64()
        .unwrap();
    ok(&alice1, &["groups", "add", &group.to_string(), "bob"]);
    let shown = ok(&bob, &["groups", "show", &group.to_string()]);
    assert_eq!(shown[0]["members"].as_array().unwrap().len(), 2);
    let group_send = cli(&alice1, &["send", "--group", &group.to_string(), "meow"]);
    if !group_send.ok {
        assert!(
            group_send.stderr.contains("refused"),
            "{}",
            group_send.stderr
        );
        assert_eq!(
            group_send.stderr.lines().count(),
            1,
            "one line: {}",
            group_send.stderr
        );
    }

    // Revoking alice2 from alice1: alice2 can no longer get a token.
    let alice2_id = devices.iter().find(|d| d["name"] == "phone").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&alice1, &["devices", "revoke", &alice2_id]);
    assert_eq!(
        ok(&alice1, &["devices", "list"])
            .iter()
            .filter(|d| d["revoked_at_ms"].is_null())
            .count(),
        1
    );

    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
