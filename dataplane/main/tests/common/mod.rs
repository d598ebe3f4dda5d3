//! `commucat serve` for the tests of real processes: started on free ports with a private data
//! directory, its start-up lines parsed, killed when dropped.
#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `commucat serve`.
pub(crate) struct Serve {
    child: Child,
    /// Where the data plane listens.
    pub(crate) listen: SocketAddr,
    /// Where the REST API listens.
    pub(crate) api: SocketAddr,
    /// The server's public key.
    pub(crate) public: [u8; 32],
    /// The `init` arguments of its invite line (`init --server ... --api ...`).
    pub(crate) invite: Vec<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.find(prefix).map(|at| &line[at + prefix.len()..])
}

/// `commucat serve` with `shards` shards on free ports (data plane and REST API), its data in
/// `data`, its stdout piped.
pub(crate) fn serve_command(data: &Path, shards: u32) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_commucat"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--shards", &shards.to_string(), "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped());
    command
}

/// Starts `commucat serve` with two shards on free ports, its data in `data`, and `extra`
/// arguments; returns once it has printed where its REST API is (its last start-up line).
pub(crate) fn serve(data: &Path, extra: &[&str]) -> Serve {
    let mut child = serve_command(data, 2).args(extra).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut listen, mut api, mut public, mut invite) = (None, None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = after(&line, "listening on ") {
            listen = rest.split(' ').next().map(|a| a.parse().unwrap());
        }
        if let Some(rest) = after(&line, "(give it to clients): ") {
            public = Some(hex::decode(rest.trim()).unwrap().try_into().unwrap());
        }
        if let Some(at) = line.find("commucat client init ") {
            let args = &line[at + "commucat client ".len()..];
            invite = Some(args.split_whitespace().map(str::to_string).collect());
        }
        if let Some(rest) = after(&line, "REST API at http://") {
            api = rest.split('/').next().map(|a| a.parse().unwrap());
            break;
        }
    }
    // Keep reading, so the server never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    Serve {
        child,
        listen: listen.expect("serve said where it listens"),
        api: api.expect("serve said where the API is"),
        public: public.expect("serve printed its key"),
        invite: invite.expect("serve printed an invite line"),
    }
}
