//! Handshake cost: how many first messages (initiations) a responder processes per second on
//! one core, with and without producing the response, and a whole handshake.
//!
//! `cargo bench --bench handshake`
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::net::SocketAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sss_proto::handshake::{
    Hello, Initiation, Initiator, Reply, Responder, ResponderConfig, StaticKeys, TransportParams,
};
use sss_proto::Identity;

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

fn bench(c: &mut Criterion) {
    let responder_id = identity(1);
    let initiator_id = identity(2);
    let initiator_keys = StaticKeys::new(&initiator_id);
    let from: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let hello = Hello {
        service: "bench".into(),
        protocol: "bench/1".into(),
        params: TransportParams::default(),
    };
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut responder = Responder::new(
        StaticKeys::new(&responder_id),
        ResponderConfig::default(),
        now,
        &mut rng,
    );
    let mut unix = 1_700_000_000_000_000_000u64;
    let mut make_initiation = |rng: &mut ChaCha20Rng| {
        unix += 1_000;
        let mut out = Vec::new();
        Initiator::start(
            &initiator_keys,
            responder_id.eid(),
            7,
            &hello,
            unix,
            rng,
            &mut out,
        )
        .expect("initiation");
        out
    };

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    let mut setup_rng = ChaCha20Rng::seed_from_u64(4);
    group.bench_function("responder: validate initiation", |b| {
        b.iter_batched(
            || make_initiation(&mut setup_rng),
            |msg| {
                let mut out = Vec::new();
                let r = responder
                    .handle_initiation(now, from, &msg, false, &mut rng, &mut out)
                    .expect("valid");
                assert!(matches!(r, Initiation::Valid(_)));
                r
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("responder: validate and respond", |b| {
        b.iter_batched(
            || make_initiation(&mut setup_rng),
            |msg| {
                let mut out = Vec::new();
                let Ok(Initiation::Valid(pending)) =
                    responder.handle_initiation(now, from, &msg, false, &mut rng, &mut out)
                else {
                    panic!("invalid initiation")
                };
                let reply = Reply::Accept {
                    suite: sss_proto::crypto::aead::Suite::ChaCha20Poly1305,
                    params: TransportParams::default(),
                };
                out.clear();
                responder
                    .respond(pending, 9, &reply, &mut rng, &mut out)
                    .expect("respond")
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("responder: cookie reply under load", |b| {
        b.iter_batched(
            || make_initiation(&mut setup_rng),
            |msg| {
                let mut out = Vec::new();
                responder
                    .handle_initiation(now, from, &msg, true, &mut rng, &mut out)
                    .expect("cookie")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
