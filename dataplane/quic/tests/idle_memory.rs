//! Goal: an idle server connection costs the server a bounded number of heap bytes (DESIGN.md
//! §7: ≤ 4 KiB of user-space memory per idle session; the QUIC carrier's share must leave room
//! for the shard's session and the IO layer's bridge entry).
//! Method: a counting global allocator keeps the live heap bytes. `IDLE_CONNS` clients connect
//! to one server in simulated time, each sends a CCP-2-sized first flight on its stream and
//! gets a reply, and the network then runs idle, with the clients' keep-alives, for a minute and
//! for an hour. The server's share is what dropping the server frees, less what dropping a
//! server that never had a connection frees; divided by the connection count it is the figure
//! reported in `docs/benchmarks.md` and bounded here. The hour must cost no more than the
//! minute: an idle connection's state must not grow with each keep-alive it answers (quinn
//! keeps up to 1000 unacknowledged ACK-only packets per connection, about 100 kB, if the peer
//! never acknowledges them).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Net;
use core::time::Duration;
use dp_quic::QuicConfig;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

// SAFETY: every method forwards to the system allocator with the same arguments; counting
// touches only an atomic, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        }
        ptr
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        }
        ptr
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        }
        new
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Idle connections measured; enough that table growth is spread thin.
const IDLE_CONNS: usize = 400;
/// The bound asserted: heap bytes per idle server connection. Measured 18 142 with quinn-proto
/// 0.11.19 and rustls 0.23.46 (what they are made of: `docs/design/0008-quic-carrier.md`).
const IDLE_CONN_BYTES_MAX: usize = 19 * 1024;
/// Growth allowed between a minute and an hour of idling, per connection (table rounding).
const IDLE_GROWTH_BYTES_MAX: usize = 64;

/// Heap bytes the server (with its test host) frees when dropped, after `conns` clients
/// connected, spoke and went idle for `idle`, and the datagrams it received while idle. Only the server's own memory goes with it: the clients
/// and the network stay.
fn server_bytes(conns: usize, idle: Duration) -> (usize, u64) {
    let config = QuicConfig {
        // No keep-alives would leave the connections idle but loss timers armed; with them the
        // measurement includes what a keep-alive exchange leaves behind.
        idle_timeout: Duration::from_secs(3600),
        keep_alive: Some(Duration::from_secs(25)),
        conns_max: 1 << 12,
        conns_per_source_max: 1 << 12,
        ..QuicConfig::default()
    };
    let mut net = Net::new(config);
    let mut ids = Vec::new();
    for _ in 0..conns {
        let c = net.add_client();
        ids.push((c, net.connect(c)));
    }
    net.run();
    // A Noise XK initiation (~100 bytes) up and the response (~100) down, then confirmation
    // and a Hello up and a Welcome down: the first flight of a CCP-2 session.
    for &(c, conn) in &ids {
        net.clients[c].send(conn, &[1u8; 96]);
    }
    net.run();
    let opened = net.server.opened();
    assert_eq!(opened.len(), conns, "every stream opened on the server");
    for &sconn in &opened {
        net.server.send(sconn, &[2u8; 96]);
    }
    net.run();
    for &(c, conn) in &ids {
        net.clients[c].send(conn, &[3u8; 200]);
    }
    net.run();
    for &sconn in &opened {
        net.server.send(sconn, &[4u8; 150]);
    }
    // Idle: keep-alive rounds, past every loss and ack timer.
    let busy = net.server.carrier.stats().datagrams_in;
    net.run_for(idle);
    let idle_datagrams = net.server.carrier.stats().datagrams_in - busy;
    assert_eq!(net.server.carrier.conns_len(), conns);
    for &(c, conn) in &ids {
        assert_eq!(net.clients[c].rx[&conn].len(), 96 + 150, "replies arrived");
    }
    assert!(net.wire.is_empty());
    // The harness's own records of the server side go first: they are not the server's.
    net.server.events = Vec::new();
    net.server.rx.clear();
    net.server.tx.clear();
    net.to_server = Vec::new();
    let before = live();
    drop(net.server);
    let after = live();
    (usize::try_from(before - after).unwrap(), idle_datagrams)
}

#[test]
fn an_idle_server_connection_costs_a_bounded_number_of_heap_bytes() {
    let per_conn = |idle: Duration| {
        let (empty, _) = server_bytes(0, idle);
        let (full, keep_alives) = server_bytes(IDLE_CONNS, idle);
        // The clients keep their connections alive every 25 s: the server answered them.
        let rounds = idle.as_secs() / 25;
        assert!(
            keep_alives >= rounds * IDLE_CONNS as u64,
            "{keep_alives} datagrams in {idle:?} idle"
        );
        println!("server base {empty} B");
        (full - empty) / IDLE_CONNS
    };
    let minute = per_conn(Duration::from_secs(60));
    let hour = per_conn(Duration::from_secs(3600));
    println!(
        "{IDLE_CONNS} idle connections: {minute} B each after a minute, {hour} B after an hour"
    );
    assert!(
        minute <= IDLE_CONN_BYTES_MAX,
        "{minute} B per idle connection, bound {IDLE_CONN_BYTES_MAX} B"
    );
    assert!(
        minute > 1024,
        "connections cost next to nothing: the count is broken"
    );
    assert!(
        hour <= minute + IDLE_GROWTH_BYTES_MAX,
        "idle connections grew from {minute} B to {hour} B in an hour of keep-alives"
    );
}
