//! Our Noise IK against an independent implementation (`snow`), message by message: same
//! static keys, prologue and (fixed) ephemeral keys on both sides, so the Noise part of each
//! message must be byte-identical, payloads must decrypt on the other side, and both must
//! end with the same handshake hash and transport keys.
//!
//! The transport keys are compared twice: directly, byte for byte, with snow's raw `Split()`
//! output (`dangerously_get_raw_split`, from snow's `risky-raw-split` feature, enabled for the
//! tests only), and through their first ciphertext (the same plaintext under the same key and
//! nonce 0 gives the same bytes only if the keys are equal).

use std::net::SocketAddr;
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};
use sss_proto::crypto::aead::{PacketKey, Suite};
use sss_proto::crypto::noise::{hash, mac16};
use sss_proto::handshake::{
    field, Hello, Initiation, Initiator, Reply, Responder, ResponderConfig, StaticKeys, Timestamp,
    TransportParams, INIT_PAYLOAD_LEN, LABEL_MAC1, PROLOGUE, TYPE_INITIATION, TYPE_RESPONSE,
};
use sss_proto::Identity;

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
const E_INITIATOR: [u8; 32] = [0x11; 32];
const E_RESPONDER: [u8; 32] = [0x22; 32];
const UNIX_NANOS: u64 = 1_700_000_000_123_456_789;

/// A "generator" that hands out fixed bytes, so that our ephemerals equal snow's fixed ones.
struct FixedRng(Vec<u8>);

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(self.0.len() >= dest.len(), "FixedRng ran out of bytes");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedRng {}

struct Hosts {
    initiator: Identity,
    responder: Identity,
}

fn hosts() -> Hosts {
    Hosts {
        initiator: Identity::from_secret_bytes(&[1; 32]),
        responder: Identity::from_secret_bytes(&[2; 32]),
    }
}

fn hello() -> Hello {
    Hello {
        service: "chat".into(),
        protocol: "chat/2".into(),
        params: TransportParams::default(),
    }
}

fn reply() -> Reply {
    Reply::Accept {
        suite: Suite::ChaCha20Poly1305,
        params: TransportParams {
            max_udp_payload: 1400,
            ..TransportParams::default()
        },
    }
}

fn snow_initiator(h: &Hosts) -> snow::HandshakeState {
    snow::Builder::new(PATTERN.parse().unwrap())
        .local_private_key(&h.initiator.x25519_secret()[..])
        .remote_public_key(&h.responder.eid().x25519_public())
        .prologue(PROLOGUE)
        .fixed_ephemeral_key_for_testing_only(&E_INITIATOR)
        .build_initiator()
        .unwrap()
}

fn snow_responder(h: &Hosts) -> snow::HandshakeState {
    snow::Builder::new(PATTERN.parse().unwrap())
        .local_private_key(&h.responder.x25519_secret()[..])
        .prologue(PROLOGUE)
        .fixed_ephemeral_key_for_testing_only(&E_RESPONDER)
        .build_responder()
        .unwrap()
}

/// The initiation payload encoded independently of the crate, from the spec's field list.
fn spec_init_payload(h: &Hosts) -> Vec<u8> {
    let mut p = Timestamp::from_unix_nanos(UNIX_NANOS).to_bytes().to_vec();
    p.extend_from_slice(h.initiator.eid().as_bytes());
    p.push(4);
    p.extend_from_slice(b"chat");
    p.push(6);
    p.extend_from_slice(b"chat/2");
    // suites = {chacha}, max_udp_payload = 1452, idle_timeout_ms = 30000, max_ack_delay = 25,
    // session_id = 0, initial_max_stream_data = 256 KiB, initial_max_data = 1 MiB,
    // initial_max_streams = 1024, max_datagram_size = 1 MiB
    p.extend_from_slice(&[
        48, 1, 1, 1, 2, 2, 0x45, 0xac, 3, 4, 0x80, 0, 0x75, 0x30, 4, 1, 25, 5, 8, 0, 0, 0, 0, 0, 0,
        0, 0, 6, 4, 0x80, 4, 0, 0, 7, 4, 0x80, 0x10, 0, 0, 8, 2, 0x44, 0, 9, 4, 0x80, 0x10, 0, 0,
    ]);
    p.resize(INIT_PAYLOAD_LEN, 0);
    p
}

/// Frames a Noise message as an SSS packet with a valid mac1 and a zero mac2.
fn frame(header: &[u8], noise: &[u8], receiver_static: &[u8; 32]) -> Vec<u8> {
    let mut msg = header.to_vec();
    msg.extend_from_slice(noise);
    let mac1 = mac16(&hash(&[LABEL_MAC1, receiver_static]), &[&msg]);
    msg.extend_from_slice(&mac1);
    msg.extend_from_slice(&[0; 16]);
    msg
}

/// The first transport message under `key`, as snow's `TransportState` makes it.
fn first_ciphertext(key: &[u8; 32]) -> Vec<u8> {
    let mut buf = b"transport key check".to_vec();
    let tag = PacketKey::new(Suite::ChaCha20Poly1305, key).seal(0, &[], &mut buf);
    buf.extend_from_slice(&tag);
    buf
}

fn snow_first_ciphertext(t: &mut snow::TransportState) -> Vec<u8> {
    let mut out = vec![0; 64];
    let n = t.write_message(b"transport key check", &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn our_initiator_against_snow() {
    let h = hosts();
    let local = StaticKeys::new(&h.initiator);
    let mut msg1 = Vec::new();
    let mut rng = FixedRng(E_INITIATOR.to_vec());
    let init = Initiator::start(
        &local,
        h.responder.eid(),
        7,
        &hello(),
        UNIX_NANOS,
        &mut rng,
        &mut msg1,
    )
    .unwrap();

    // snow reads our initiation; the payload is the one the spec describes.
    let mut snow_r = snow_responder(&h);
    let mut payload = vec![0; 2048];
    let n = snow_r
        .read_message(&msg1[field::INIT_NOISE], &mut payload)
        .unwrap();
    assert_eq!(&payload[..n], &spec_init_payload(&h)[..]);
    assert_eq!(
        snow_r.get_remote_static().unwrap(),
        &h.initiator.eid().x25519_public()
    );

    // snow's own initiator writes the very same bytes.
    let mut snow_i = snow_initiator(&h);
    let mut snow_msg1 = vec![0; 2048];
    let n = snow_i.write_message(&payload[..n], &mut snow_msg1).unwrap();
    assert_eq!(&snow_msg1[..n], &msg1[field::INIT_NOISE]);

    // snow responds; we read it.
    let mut reply_bytes = Vec::new();
    reply().encode(&mut reply_bytes).unwrap();
    let mut noise2 = vec![0; 1024];
    let n = snow_r.write_message(&reply_bytes, &mut noise2).unwrap();
    let mut header = vec![TYPE_RESPONSE, 0, 0, 0];
    header.extend_from_slice(&9u32.to_be_bytes());
    header.extend_from_slice(&7u32.to_be_bytes());
    let msg2 = frame(&header, &noise2[..n], &local.public());
    let est = init.handle_response(&local, &msg2).unwrap();
    assert_eq!(est.reply, reply());
    assert_eq!(est.remote_index, 9);
    assert_eq!(&est.keys.handshake_hash[..], snow_r.get_handshake_hash());

    // Split() gives (k1, k2) on both sides: k1 carries initiator-to-responder traffic.
    let (k1, k2) = snow_r.dangerously_get_raw_split();
    assert_eq!(
        k1, *est.keys.send,
        "initiator send key = snow responder's k1"
    );
    assert_eq!(
        k2, *est.keys.recv,
        "initiator receive key = snow responder's k2"
    );
    // snow's initiator, whose first message equals ours, reads the same response and ends
    // with the same keys.
    let mut scratch = vec![0; 1024];
    snow_i.read_message(&noise2[..n], &mut scratch).unwrap();
    assert_eq!(snow_i.dangerously_get_raw_split(), (k1, k2));

    let mut snow_t = snow_r.into_transport_mode().unwrap();
    // The responder sends with k2 = our receive key.
    assert_eq!(
        snow_first_ciphertext(&mut snow_t),
        first_ciphertext(&est.keys.recv)
    );
    let mut plain = vec![0; 64];
    let ours = first_ciphertext(&est.keys.send);
    let n = snow_t.read_message(&ours, &mut plain).unwrap();
    assert_eq!(&plain[..n], b"transport key check");
}

#[test]
fn snow_initiator_against_our_responder() {
    let h = hosts();
    let local = StaticKeys::new(&h.responder);
    let mut rng = FixedRng([[0x33; 32], E_RESPONDER].concat());
    let mut responder = Responder::new(local, ResponderConfig::default(), Instant::now(), &mut rng);

    // snow initiates with a payload encoded from the spec.
    let mut snow_i = snow_initiator(&h);
    let mut noise1 = vec![0; 2048];
    let n = snow_i
        .write_message(&spec_init_payload(&h), &mut noise1)
        .unwrap();
    let mut header = vec![TYPE_INITIATION, 0, 0, 0];
    header.extend_from_slice(&7u32.to_be_bytes());
    let msg1 = frame(&header, &noise1[..n], &h.responder.eid().x25519_public());
    assert_eq!(msg1.len(), 1200);

    let from: SocketAddr = "198.51.100.1:5000".parse().unwrap();
    let now = Instant::now();
    let mut out = Vec::new();
    let Initiation::Valid(pending) = responder
        .handle_initiation(now, from, &msg1, false, &mut rng, &mut out)
        .unwrap()
    else {
        panic!("snow's initiation is valid");
    };
    assert_eq!(pending.remote(), h.initiator.eid());
    assert_eq!(pending.hello(), &hello());
    assert_eq!(pending.timestamp().unix_nanos(), UNIX_NANOS);

    let mut msg2 = Vec::new();
    let keys = responder
        .respond(pending, 9, &reply(), &mut rng, &mut msg2)
        .unwrap()
        .expect("accepted");
    let noise2 = &msg2[field::RESP_EPHEMERAL.start..msg2.len() - 32];

    // snow's own responder, given the same initiation, writes the very same response bytes.
    let mut snow_r = snow_responder(&h);
    let mut scratch = vec![0; 2048];
    snow_r.read_message(&noise1[..n], &mut scratch).unwrap();
    let mut reply_bytes = Vec::new();
    reply().encode(&mut reply_bytes).unwrap();
    let mut snow_msg2 = vec![0; 1024];
    let m = snow_r.write_message(&reply_bytes, &mut snow_msg2).unwrap();
    assert_eq!(&snow_msg2[..m], noise2);

    // snow's initiator reads our response.
    let mut payload = vec![0; 1024];
    let m = snow_i.read_message(noise2, &mut payload).unwrap();
    assert_eq!(&payload[..m], &reply_bytes[..]);
    assert_eq!(&keys.handshake_hash[..], snow_i.get_handshake_hash());

    // The responder sends with k2 and receives with k1, in snow's split as in ours.
    let (k1, k2) = snow_i.dangerously_get_raw_split();
    assert_eq!(k2, *keys.send, "responder send key = snow initiator's k2");
    assert_eq!(
        k1, *keys.recv,
        "responder receive key = snow initiator's k1"
    );
    assert_eq!(snow_r.dangerously_get_raw_split(), (k1, k2));
    assert_ne!(k1, k2);

    let mut snow_t = snow_i.into_transport_mode().unwrap();
    // The initiator sends with k1 = the responder's receive key.
    assert_eq!(
        snow_first_ciphertext(&mut snow_t),
        first_ciphertext(&keys.recv)
    );
    let mut plain = vec![0; 64];
    let n = snow_t
        .read_message(&first_ciphertext(&keys.send), &mut plain)
        .unwrap();
    assert_eq!(&plain[..n], b"transport key check");
}

/// Early data (spec/handshake.md §3.4) is part of the payload snow sees as opaque bytes: an
/// initiation snow writes with an `early` field encoded from the spec gives our responder
/// exactly those bytes.
#[test]
fn snow_initiation_with_early_data() {
    let h = hosts();
    let local = StaticKeys::new(&h.responder);
    let mut rng = FixedRng([[0x33; 32], E_RESPONDER].concat());
    let mut responder = Responder::new(local, ResponderConfig::default(), Instant::now(), &mut rng);
    let early: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
    let mut payload = spec_init_payload(&h);
    // timestamp, EID, "chat", "chat/2", the 49-byte parameter block; then the early field.
    payload.truncate(12 + 32 + 5 + 7 + 49);
    payload.extend_from_slice(&[0x40 | (early.len() >> 8) as u8, early.len() as u8]);
    payload.extend_from_slice(&early);
    payload.resize(INIT_PAYLOAD_LEN, 0);

    let mut snow_i = snow_initiator(&h);
    let mut noise1 = vec![0; 2048];
    let n = snow_i.write_message(&payload, &mut noise1).unwrap();
    let mut header = vec![TYPE_INITIATION, 0, 0, 0];
    header.extend_from_slice(&7u32.to_be_bytes());
    let msg1 = frame(&header, &noise1[..n], &h.responder.eid().x25519_public());
    let from: SocketAddr = "198.51.100.1:5000".parse().unwrap();
    let Initiation::Valid(pending) = responder
        .handle_initiation(
            Instant::now(),
            from,
            &msg1,
            false,
            &mut rng,
            &mut Vec::new(),
        )
        .unwrap()
    else {
        panic!("snow's initiation is valid");
    };
    assert_eq!(pending.hello(), &hello());
    assert_eq!(pending.early_data(), &early[..]);
}
