//! Goal: the sans-IO crates stay free of runtimes, sockets and clocks (DESIGN.md §8,
//! STYLE.md §3.1), and lower layers never depend on higher ones. Method: read the resolved
//! dependency graph from `cargo metadata` and check every sans-IO crate against the ban list.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Crates that must perform no I/O, read no clock and draw no OS randomness themselves.
const SANS_IO: &[&str] = &[
    "dp-core", "dp-proto", "dp-noise", "dp-link", "dp-quic", "dp-shard",
];
/// Runtime, socket and event-loop crates: banned anywhere below a sans-IO crate.
const BANNED_ANYWHERE: &[&str] = &[
    "tokio",
    "glommio",
    "io-uring",
    "mio",
    "socket2",
    "async-std",
];
/// System-call crates: banned as a direct dependency of a sans-IO crate (crypto crates may use
/// them internally for CPU feature detection, which is not I/O).
const BANNED_DIRECT: &[&str] = &["libc", "nix", "rustix", "getrandom", "rand"];
/// Allowed direct workspace dependencies of each layer: lower layers only.
const LAYERS: &[(&str, &[&str])] = &[
    ("dp-core", &[]),
    ("dp-proto", &["dp-core"]),
    ("dp-noise", &["dp-core", "dp-proto"]),
    ("dp-link", &["dp-core", "dp-proto"]),
    // Beside dp-noise: a carrier of bytes that knows nothing of Noise, frames or shards.
    ("dp-quic", &["dp-core"]),
    ("dp-shard", &["dp-core", "dp-proto", "dp-noise", "dp-link"]),
    (
        "dp-io",
        &[
            "dp-core", "dp-proto", "dp-noise", "dp-link", "dp-quic", "dp-shard",
        ],
    ),
    // The control side: storage knows ids only; the domain knows the handshake's proof of
    // identity; the API serves the domain. None of them reaches into the data plane's
    // machinery.
    ("control-store", &["dp-core"]),
    ("control-core", &["dp-core", "dp-noise", "control-store"]),
    (
        "control-api",
        &["dp-core", "dp-noise", "control-core", "control-store"],
    ),
];

fn metadata() -> Value {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// name → (id, names of its normal (non-dev, non-build) dependencies).
fn graph(meta: &Value) -> (BTreeMap<String, String>, BTreeMap<String, Vec<String>>) {
    let mut names = BTreeMap::new();
    for package in meta["packages"].as_array().unwrap() {
        names.insert(
            package["id"].as_str().unwrap().to_string(),
            package["name"].as_str().unwrap().to_string(),
        );
    }
    let mut ids_by_name = BTreeMap::new();
    let mut deps = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_string();
        let normal: Vec<String> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|dep| {
                dep["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|kind| kind["kind"].is_null())
            })
            .map(|dep| dep["pkg"].as_str().unwrap().to_string())
            .collect();
        ids_by_name.insert(names[&id].clone(), id.clone());
        deps.insert(id, normal);
    }
    let deps_by_name = deps
        .into_iter()
        .map(|(id, list)| (id, list.iter().map(|d| names[d].clone()).collect()))
        .collect();
    (ids_by_name, deps_by_name)
}

fn transitive(
    start: &str,
    deps: &BTreeMap<String, Vec<String>>,
    ids: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let id_to_deps: BTreeMap<&str, &Vec<String>> = ids
        .iter()
        .map(|(name, id)| (name.as_str(), &deps[id]))
        .collect();
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_string()];
    while let Some(name) = stack.pop() {
        for dep in id_to_deps.get(name.as_str()).copied().into_iter().flatten() {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn sans_io_crates_depend_on_no_runtime_socket_or_clock_crate() {
    let meta = metadata();
    let (ids, deps) = graph(&meta);
    for krate in SANS_IO {
        let direct = &deps[&ids[*krate]];
        for banned in BANNED_DIRECT {
            assert!(
                !direct.iter().any(|d| d == banned),
                "{krate} depends directly on {banned}"
            );
        }
        let all = transitive(krate, &deps, &ids);
        for banned in BANNED_ANYWHERE {
            assert!(
                !all.contains(*banned),
                "{krate} depends (transitively) on {banned}"
            );
        }
    }
}

#[test]
fn layers_depend_only_downwards() {
    let meta = metadata();
    let (ids, deps) = graph(&meta);
    let workspace: BTreeSet<String> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let id = id.as_str().unwrap();
            meta["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["id"] == id)
                .unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        workspace.contains("dp-shard"),
        "workspace members: {workspace:?}"
    );
    for (krate, allowed) in LAYERS {
        for dep in &deps[&ids[*krate]] {
            if workspace.contains(dep) {
                assert!(
                    allowed.contains(&dep.as_str()),
                    "{krate} must not depend on {dep}"
                );
            }
        }
    }
}
