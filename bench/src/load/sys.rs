//! What the load generator reads from and does to the system: CPU time and memory of a
//! process from `/proc`, CPU pinning with `taskset`, the machine and the commit.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// This thread's kernel task id.
pub fn current_tid() -> io::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("cannot read /proc/thread-self"))
}

/// Pins task `tid` (a thread or a process) to `cpu` with `taskset`.
pub fn pin_task(tid: u32, cpu: usize, all_threads: bool) -> io::Result<()> {
    let mut command = Command::new("taskset");
    if all_threads {
        command.arg("-a");
    }
    let status = command
        .args(["-pc", &cpu.to_string(), &tid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "taskset failed for {tid} on CPU {cpu}"
        )))
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin_task(current_tid()?, cpu, false)
}

/// The task ids of process `pid` whose name (`comm`) starts with `prefix` (all if `None`).
pub fn tasks(pid: u32, prefix: Option<&str>) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let matches = match prefix {
            None => true,
            Some(prefix) => std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix)),
        };
        matches.then_some(tid)
    })
    .collect()
}

/// Nanoseconds of CPU time (user and system) used so far by the tasks of `pid` whose name
/// starts with `prefix` (all if `None`): `/proc/PID/task/TID/schedstat`, first field, which
/// has nanosecond resolution (`/proc/PID/stat`'s utime+stime counts 10 ms ticks); falls back to
/// `stat` where schedstat is missing.
pub fn cpu_ns(pid: u32, prefix: Option<&str>) -> u64 {
    tasks(pid, prefix)
        .into_iter()
        .map(|tid| {
            let base = format!("/proc/{pid}/task/{tid}");
            schedstat_ns(Path::new(&base)).unwrap_or_else(|| stat_ns(Path::new(&base)))
        })
        .sum()
}

fn schedstat_ns(task: &Path) -> Option<u64> {
    std::fs::read_to_string(task.join("schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime from `stat`, in ns (assuming the usual 100 ticks per second).
fn stat_ns(task: &Path) -> u64 {
    let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // state is field 3 of the whole line, index 0 here; utime and stime are fields 14 and 15.
    (ticks(11) + ticks(12)) * 10_000_000
}

/// CPU time of the calling thread so far, ns (`/proc/thread-self/schedstat`).
pub fn thread_cpu_ns() -> u64 {
    schedstat_ns(Path::new("/proc/thread-self")).unwrap_or(0)
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The machine: CPU model, CPUs available, kernel.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// CPUs available to this process.
    pub nproc: usize,
    /// Kernel release.
    pub kernel: String,
}

/// Reads [`Machine`].
pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Machine {
        cpu,
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel,
    }
}

/// The commit of the working directory (`git describe --always --dirty`), or "unknown".
pub fn git_commit() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
