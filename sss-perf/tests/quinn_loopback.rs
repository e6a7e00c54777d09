//! The quinn stack end to end in one process on loopback: server task, client, verification.

use std::net::SocketAddr;

use sss_perf::client::{self, Corruption, RequestsPlan, UploadPlan};
use sss_perf::quinn_stack::{QuinnDialer, QuinnListener};
use sss_perf::stack::{Listener, Target};
use sss_perf::tuning::Tuning;
use sss_perf::wire::Status;
use sss_perf::PerfError;

/// Starts a server task on an ephemeral loopback port; returns the target naming it.
fn start_server(tuning: &Tuning) -> Target {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listener = QuinnListener::bind(addr, None, tuning).unwrap();
    let target = Target {
        eid: listener.identity(),
        addr: listener.local_addr().unwrap(),
    };
    tokio::spawn(sss_perf::serve::serve(listener));
    target
}

#[tokio::test]
async fn four_megabytes_over_four_streams_verify() {
    let tuning = Tuning::default();
    let target = start_server(&tuning);
    let dialer = QuinnDialer::bind(&target, &tuning).unwrap();
    let plan = UploadPlan {
        bytes: 4_000_000,
        streams: 4,
        seed: 11,
        corrupt: None,
    };
    let report = client::upload(&dialer, &target, plan).await.unwrap();
    assert_eq!(report.bytes, 4_000_000);
    assert_eq!(report.streams, 4);
    assert!(report.secs > 0.0 && report.gbps > 0.0, "{report:?}");
    assert!(report.connect_ms > 0.0, "{report:?}");
}

#[tokio::test]
async fn a_flipped_byte_is_rejected_by_the_server() {
    let tuning = Tuning::default();
    let target = start_server(&tuning);
    let dialer = QuinnDialer::bind(&target, &tuning).unwrap();
    let corrupt = Some(Corruption {
        stream: 2,
        offset: 123_456,
    });
    let plan = UploadPlan {
        bytes: 4_000_000,
        streams: 4,
        seed: 11,
        corrupt,
    };
    match client::upload(&dialer, &target, plan).await {
        Err(PerfError::Rejected {
            stream: 2,
            status: Status::MISMATCH,
            value: 123_456,
        }) => {}
        other => panic!("expected a mismatch on stream 2 at 123456, got {other:?}"),
    }
}

#[tokio::test]
async fn hundred_round_trips() {
    let tuning = Tuning::default();
    let target = start_server(&tuning);
    let dialer = QuinnDialer::bind(&target, &tuning).unwrap();
    let plan = RequestsPlan {
        requests: 100,
        size: 64,
        seed: 3,
    };
    let report = client::requests(&dialer, &target, plan).await.unwrap();
    assert_eq!(report.requests, 100);
    assert_eq!(report.size, 64);
    assert!(
        0.0 < report.p50_us && report.p50_us <= report.p99_us,
        "{report:?}"
    );
    assert!(report.mean_us > 0.0);
}

#[tokio::test]
async fn large_requests_span_many_packets() {
    let tuning = Tuning::default();
    let target = start_server(&tuning);
    let dialer = QuinnDialer::bind(&target, &tuning).unwrap();
    let plan = RequestsPlan {
        requests: 5,
        size: 300_000,
        seed: 4,
    };
    let report = client::requests(&dialer, &target, plan).await.unwrap();
    assert_eq!(report.requests, 5);
}

#[tokio::test]
async fn a_client_pinned_to_another_identity_cannot_connect() {
    let tuning = Tuning::default();
    let mut target = start_server(&tuning);
    let other = QuinnListener::bind("127.0.0.1:0".parse().unwrap(), None, &tuning).unwrap();
    target.eid = other.identity();
    let dialer = QuinnDialer::bind(&target, &tuning).unwrap();
    let plan = UploadPlan {
        bytes: 10,
        streams: 1,
        seed: 1,
        corrupt: None,
    };
    assert!(matches!(
        client::upload(&dialer, &target, plan).await,
        Err(PerfError::Io { .. })
    ));
}

#[tokio::test]
async fn chacha20_works_too() {
    let tuning = Tuning {
        cipher: sss_perf::tuning::CipherChoice::Chacha20,
        ..Tuning::default()
    };
    let target = start_server(&tuning);
    let dialer = QuinnDialer::bind(&target, &tuning).unwrap();
    let plan = UploadPlan {
        bytes: 1_000_000,
        streams: 2,
        seed: 5,
        corrupt: None,
    };
    client::upload(&dialer, &target, plan).await.unwrap();
}
