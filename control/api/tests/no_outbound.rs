//! DESIGN.md §6.8, S9: the original server connected to any host:port a client named. The API
//! cannot: no HTTP, WebSocket or DNS client is in its dependency graph at all, and the HTTP
//! stack it uses is built without its client half. Method: read the resolved graph from
//! `cargo metadata` (features as resolved for the workspace).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const CLIENT_CRATES: &[&str] = &[
    "reqwest",
    "ureq",
    "isahc",
    "surf",
    "curl",
    "attohttpc",
    "hickory-resolver",
    "trust-dns-resolver",
    "tokio-tungstenite",
    "tungstenite",
    "async-tungstenite",
];

#[test]
fn attack_api_makes_outbound_connections_needs_a_client_it_does_not_have() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success());
    let meta: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut names = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        names.insert(
            p["id"].as_str().unwrap().to_string(),
            p["name"].as_str().unwrap().to_string(),
        );
    }
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut features: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut start = None;
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_string();
        if names[&id] == "control-api" {
            start = Some(id.clone());
        }
        let normal = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap().to_string())
            .collect();
        deps.insert(id.clone(), normal);
        features.insert(
            names[&id].clone(),
            node["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect(),
        );
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.expect("control-api in the graph")];
    while let Some(id) = stack.pop() {
        for dep in &deps[&id] {
            if seen.insert(names[dep].clone()) {
                stack.push(dep.clone());
            }
        }
    }
    assert!(seen.contains("axum") && seen.contains("hyper"), "{seen:?}");
    for client in CLIENT_CRATES {
        assert!(!seen.contains(*client), "control-api depends on {client}");
    }
    for krate in ["hyper", "hyper-util"] {
        for feature in features.get(krate).into_iter().flatten() {
            assert!(
                !feature.starts_with("client"),
                "{krate} is built with its {feature} feature"
            );
        }
    }
}
