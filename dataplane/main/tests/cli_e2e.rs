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

/// Every file of the server's SQLite store (the database and its journal or write-ahead log).
fn store_bytes(data: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("commucat.sqlite3") {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(
        !bytes.is_empty(),
        "no commucat.sqlite3 in {}",
        data.display()
    );
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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
    // Its backlog is stored encrypted: no stored byte holds the text, while the store does
    // hold what it should read (the handles).
    let store = store_bytes(&dir.join("data"));
    assert!(contains(&store, b"alice"), "the store files were read");
    for text in ["hi bob", "hi alice", "while you were away"] {
        assert!(
            !contains(&store, text.as_bytes()),
            "{text:?} stored in the clear"
        );
    }
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
    assert!(
        backlog.iter().all(|m| m["encrypted"] == true),
        "{backlog:?}"
    );
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

#[test]
fn a_group_message_is_encrypted_once_and_every_member_device_reads_it() {
    let dir = std::env::temp_dir().join(format!("commucat-cli-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = common::serve(&dir.join("data"), &[]);
    let names = ["ann", "ben", "cat"];
    let profiles: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    for (p, name) in profiles.iter().zip(names) {
        let mut args: Vec<&str> = server.invite.iter().map(String::as_str).collect();
        args.extend(["--device-name", name]);
        ok(p, &args);
        ok(p, &["register", name]);
    }
    // A second device for cat: every member *device* must read the group message.
    let cat2 = dir.join("cat2");
    let mut args: Vec<&str> = server.invite.iter().map(String::as_str).collect();
    args.extend(["--device-name", "cat2"]);
    ok(&cat2, &args);
    let code = ok(&profiles[2], &["pair", "create"])[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&cat2, &["pair", "claim", &code]);
    // The owner befriends the others (only friends can be invited); they are not each other's
    // friends, yet as members of one group they see each other's devices and claim their keys.
    for (j, b) in names.iter().enumerate().skip(1) {
        ok(&profiles[0], &["friends", "add", b]);
        ok(&profiles[j], &["friends", "accept", names[0]]);
    }
    let group = ok(&profiles[0], &["groups", "create", "pets"])[0]["id"]
        .as_u64()
        .unwrap();
    let id = group.to_string();
    ok(&profiles[0], &["groups", "add", &id, "ben"]);
    ok(&profiles[0], &["groups", "add", &id, "cat"]);

    let sent = ok(&profiles[0], &["send", "--group", &id, "purr to all"]);
    let sent: Vec<&Value> = sent.iter().filter(|v| v["type"] == "sent").collect();
    assert_eq!(sent.len(), 1, "one conversation send: {sent:?}");
    assert_eq!(sent[0]["group"], group);
    assert_eq!(sent[0]["devices"], 3, "ben, cat and cat2");
    let store = store_bytes(&dir.join("data"));
    assert!(!contains(&store, b"purr to all"), "stored in the clear");

    for reader in [&profiles[1], &profiles[2], &cat2] {
        let got = ok(reader, &["listen", "--count", "1", "--timeout", "20"]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["text"], "purr to all", "{got:?}");
        assert_eq!(got[0]["conversation"], group);
        assert_eq!(got[0]["from"], "ann");
        assert_eq!(got[0]["encrypted"], true);
    }

    // A second message reuses the session (no new key); ben answers with his own session.
    ok(&profiles[0], &["send", "--group", &id, "second"]);
    ok(&profiles[1], &["send", "--group", &id, "from ben"]);
    let got = ok(&cat2, &["listen", "--count", "2", "--timeout", "20"]);
    assert_eq!(
        texts(&got),
        BTreeSet::from(["second".to_string(), "from ben".to_string()]),
        "{got:?}"
    );

    // ben leaves: the next message goes under a new key that only the remaining devices get.
    ok(&profiles[0], &["groups", "remove", &id, "ben"]);
    ok(&profiles[0], &["send", "--group", &id, "after ben"]);
    let got = ok(&profiles[2], &["listen", "--count", "3", "--timeout", "20"]);
    assert!(texts(&got).contains("after ben"), "{got:?}");

    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
