//! The voice demo (`examples/voice/`) on real UDP sockets over loopback: a short call with a
//! competing bulk transfer delivers nearly every frame and reports consistent figures.

#[allow(dead_code)]
#[path = "../examples/voice/call.rs"]
mod call;
#[allow(dead_code)]
#[path = "../examples/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../examples/voice/jitter.rs"]
mod jitter;
#[allow(dead_code)]
#[path = "../examples/voice/local.rs"]
mod local;

use std::time::Duration;

use call::{CallConfig, CallReport};

fn config(bulk: bool) -> CallConfig {
    CallConfig {
        frame_bytes: 160,
        duration: Duration::from_secs(2),
        buffer: Duration::from_millis(60),
        bulk,
        report: None,
    }
}

/// The figures of one direction are consistent with each other and with what was sent.
fn check_direction(what: &str, r: &CallReport, peer: &CallReport) {
    let c = &r.figures.counters;
    let sent = r.peer_sent.unwrap_or_else(|| panic!("{what}: no goodbye"));
    assert_eq!(
        sent, peer.sent,
        "{what}: the frame count heard is the count sent"
    );
    assert_eq!(sent, 100, "{what}: 2 s of 20 ms frames");
    assert_eq!(c.received + r.lost(), sent, "{what}: {c:?}");
    assert_eq!(
        c.played + c.concealed,
        sent,
        "{what}: every frame due was played or concealed: {c:?}"
    );
    assert!(
        c.late <= c.received && c.played <= c.received,
        "{what}: {c:?}"
    );
    assert_eq!(c.ignored, 0, "{what}: no duplicates on loopback");
    // Nearly all frames on clean loopback (a loaded machine may starve a task for a moment).
    assert!(
        c.received >= 95,
        "{what}: only {} of 100 frames arrived",
        c.received
    );
    let [p50, p95, p99, max] = r.figures.delay_ms.expect("delay samples");
    assert!(
        0.0 <= p50 && p50 <= p95 && p95 <= p99 && p99 <= max,
        "{what}: percentiles in order: {:?}",
        r.figures.delay_ms
    );
    assert!(
        r.figures.jitter_ms.is_finite() && r.figures.jitter_ms >= 0.0 && r.figures.jitter_ms <= max,
        "{what}: jitter {}",
        r.figures.jitter_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_competing_bulk_transfer_delivers_nearly_all_frames() {
    let call = tokio::time::timeout(
        Duration::from_secs(30),
        local::call_locally(&config(true), None, false),
    )
    .await
    .expect("no hang")
    .unwrap();
    check_direction("caller -> callee", &call.callee, &call.caller);
    check_direction("callee -> caller", &call.caller, &call.callee);
    assert!(call.caller.bulk_sent > 0, "the caller sent bulk data");
    assert!(
        call.callee.bulk_received > 0 && call.callee.bulk_received <= call.caller.bulk_sent,
        "the callee received bulk data alongside: {} of {}",
        call.callee.bulk_received,
        call.caller.bulk_sent
    );
    assert_eq!(call.caller.bulk_received, 0, "bulk went one way only");
    assert!(call.relay.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_lossy_relay_losses_are_counted_as_the_relay_dropped_them() {
    let impair = sss_host::ImpairConfig {
        loss: 0.05,
        delay: Duration::from_millis(5),
        seed: 3,
        ..sss_host::ImpairConfig::default()
    };
    let call = tokio::time::timeout(
        Duration::from_secs(30),
        local::call_locally(&config(false), Some(impair), false),
    )
    .await
    .expect("no hang")
    .unwrap();
    let relay = call.relay.expect("relay stats");
    for (what, r, peer) in [
        ("caller -> callee", &call.callee, &call.caller),
        ("callee -> caller", &call.caller, &call.callee),
    ] {
        let c = &r.figures.counters;
        let sent = r
            .peer_sent
            .expect("goodbye (a reliable datagram) arrives despite loss");
        assert_eq!(sent, peer.sent);
        assert_eq!(c.received + r.lost(), sent, "{what}: {c:?}");
        assert_eq!(c.played + c.concealed, sent, "{what}: {c:?}");
        let [p50, ..] = r.figures.delay_ms.expect("delay samples");
        assert!(
            p50 >= 5.0,
            "{what}: the relay's 5 ms delay shows: p50 {p50} ms"
        );
    }
    // Frames are one datagram each; the relay also dropped handshake, ACK and goodbye
    // packets, so it dropped at least as many as were lost.
    let lost = call.callee.lost() + call.caller.lost();
    assert!(lost > 0, "5 % loss over 200 frames loses some");
    assert!(
        lost <= relay.forward.dropped_loss + relay.backward.dropped_loss,
        "lost {lost}, relay dropped {:?}",
        relay
    );
}
