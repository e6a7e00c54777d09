//! The command-line contract: first server line, one JSON line, exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_sss-perf");

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quinn_server() -> Server {
    server("quinn")
}

fn server(stack: &str) -> Server {
    let mut child = Command::new(EXE)
        .args(["server", "--listen", "127.0.0.1:0", "--stack", stack])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let rest = line
        .trim()
        .strip_prefix("eid=")
        .expect("first line starts with eid=");
    let (eid, addr) = rest.split_once(" addr=").expect("then addr=");
    assert_eq!(eid.len(), 52, "{line}");
    Server(child, format!("{eid}@{addr}"))
}

fn client(target: &str, args: &[&str]) -> std::process::Output {
    client_on("quinn", target, args)
}

fn client_on(stack: &str, target: &str, args: &[&str]) -> std::process::Output {
    Command::new(EXE)
        .args(["client", "--connect", target, "--stack", stack])
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn upload_prints_one_json_line() {
    let server = quinn_server();
    let out = client(&server.1, &["--bytes", "2M", "--streams", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5);
    assert_eq!(v["bytes"], 2_000_000);
    assert_eq!(v["streams"], 3);
    for key in ["secs", "gbps", "connect_ms"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
}

#[test]
fn requests_print_latency_json() {
    let server = quinn_server();
    let out = client(&server.1, &["--requests", "50", "--size", "64"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"], 50);
    assert_eq!(v["size"], 64);
    assert!(v["p99_us"].as_f64().unwrap() >= v["p50_us"].as_f64().unwrap());
}

#[test]
fn a_corrupted_upload_exits_non_zero() {
    let server = quinn_server();
    let out = client(
        &server.1,
        &["--bytes", "1M", "--streams", "2", "--corrupt", "1:1000"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rejected stream 1") && stderr.contains("1000"),
        "{stderr}"
    );
}

#[test]
fn the_sss_stack_serves_uploads_and_round_trips() {
    let server = server("sss");
    let out = client_on("sss", &server.1, &["--bytes", "3M", "--streams", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(v["bytes"], 3_000_000);
    assert_eq!(v["streams"], 4);
    let out = client_on("sss", &server.1, &["--requests", "50", "--size", "100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert!(v["p50_us"].as_f64().unwrap() > 0.0);
    // A wrong EID is an error, not a hang or a silent success.
    let wrong = format!("{}@{}", "a".repeat(52), server.1.split_once('@').unwrap().1);
    let out = client_on("sss", &wrong, &["--bytes", "1", "--streams", "1"]);
    assert!(!out.status.success());
}
