//! The real `regserver` binary on loopback: what it prints, that hosts can register and look
//! each other up through it, its key file, its errors and its exit on signals.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sss_proto::{Eid, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_regserver");

/// A running regserver, killed if the test ends early.
struct Running {
    child: Child,
    eid: Eid,
    addr: SocketAddr,
}

impl Running {
    fn start(key: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["--bind", "127.0.0.1:0", "--key"])
            .arg(key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (eid, addr) = parse_banner(&line).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("unexpected first line {line:?}")
        });
        Self { child, eid, addr }
    }

    /// Sends `signal` and waits (at most 5 s) for the exit; returns the status and stderr.
    fn stop(mut self, signal: &str) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after {signal}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `regserver eid=<EID> addr=<ADDR>`.
fn parse_banner(line: &str) -> Option<(Eid, SocketAddr)> {
    let rest = line.trim_end().strip_prefix("regserver eid=")?;
    let (eid, addr) = rest.split_once(" addr=")?;
    Some((eid.parse().ok()?, addr.parse().ok()?))
}

/// Runs the binary to completion with `args`; (status, stdout, stderr).
fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn binary_prints_eid_and_address_serves_register_lookup_notify_and_exits_on_sigterm() {
    let dir = common::scratch_dir("serve");
    let key = dir.join("server.key");
    let server = Running::start(&key);

    // The key was created for the owner only, and the printed EID is its public key.
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(Identity::load(&key).unwrap().eid(), server.eid);
    assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(server.addr.port(), 0);

    common::register_lookup_notify(server.addr, server.eid).await;

    let (status, stderr) = server.stop("-TERM");
    assert!(status.success(), "exit {status:?}, stderr {stderr}");
    assert!(stderr.contains("created a new key file"), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

#[test]
fn binary_keeps_its_eid_across_restarts_and_exits_cleanly_on_sigint() {
    let dir = common::scratch_dir("restart");
    let key = dir.join("server.key");
    let first = Running::start(&key);
    let eid = first.eid;
    let (status, _) = first.stop("-INT");
    assert!(status.success());

    let second = Running::start(&key);
    assert_eq!(second.eid, eid, "the key file keeps the EID");
    let (status, stderr) = second.stop("-INT");
    assert!(status.success(), "exit {status:?}, stderr {stderr}");
    assert!(stderr.contains("SIGINT"), "{stderr}");
    assert!(!stderr.contains("created a new key file"), "{stderr}");
}

#[test]
fn binary_refuses_a_bad_key_file_clearly_and_leaves_it_alone() {
    let dir = common::scratch_dir("badkey");
    let key = dir.join("garbage.key");
    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (status, stdout, stderr) = run(&["--bind", "127.0.0.1:0", "--key", key.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.is_empty(),
        "nothing printed before the key loads: {stdout}"
    );
    assert!(
        stderr.contains("error: key file") && stderr.contains("garbage.key"),
        "{stderr}"
    );
    assert!(stderr.contains("header"), "says what is wrong: {stderr}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "not a key\n");

    // A key others can read is refused, with the fix.
    let open = dir.join("open.key");
    common::identity(5).save(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (status, _, stderr) = run(&["--bind", "127.0.0.1:0", "--key", open.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("readable by others") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    // A key in a directory that does not exist.
    let missing = dir.join("no-such-dir").join("k");
    let (status, _, stderr) = run(&["--key", missing.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("no-such-dir"), "{stderr}");
}

#[test]
fn binary_reports_an_address_in_use() {
    let dir = common::scratch_dir("inuse");
    let key = dir.join("server.key");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stdout, stderr) = run(&["--bind", &addr, "--key", key.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("cannot listen on UDP {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn binary_rejects_bad_arguments_with_usage() {
    let (status, _, stderr) = run(&["--bind", "nowhere", "--key", "k"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--bind"), "{stderr}");
    let (status, _, stderr) = run(&[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--key"), "{stderr}");
}
