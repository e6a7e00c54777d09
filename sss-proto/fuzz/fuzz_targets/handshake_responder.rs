//! The handshake's receiving paths under hostile input.
//!
//! The first input byte picks a mode:
//! - raw modes feed the rest of the input as an initiation to a fresh `Responder` (both
//!   `under_load` values), as a response to an `Initiator`, or as a cookie reply to it;
//! - structured modes take a VALID message built from fixed keys (an initiation, a response,
//!   a cookie reply), apply fuzzer-chosen byte edits and an optional resize, optionally
//!   recompute mac1/mac2 so the edit reaches the Noise layer, and then check the exact
//!   outcome: an unchanged authenticated part succeeds (with the unauthenticated index the
//!   edit chose), any change to it is an error, never a panic.
//!
//! Structured input: `[mode][flags][len_hi len_lo]` then 3-byte edits `[pos_hi pos_lo xor]`.
//! Flags: bit 0 under load, bit 1 recompute mac1, bit 2 recompute mac2 (a valid cookie),
//! bit 3 resize the message to `len % 1400` bytes (zero-filled) before the edits.
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore};
use sss_proto::crypto::aead::Suite;
use sss_proto::crypto::noise::{hash, mac16};
use sss_proto::handshake::{
    field, HandshakeError, Hello, Initiation, Initiator, Reply, Responder, ResponderConfig,
    StaticKeys, TransportParams, COOKIE_REPLY_LEN, INITIATION_LEN, LABEL_MAC1,
};
use sss_proto::Identity;

/// Fills every byte with one value: deterministic ephemeral keys, nonces and cookie secrets.
struct ConstRng(u8);

impl RngCore for ConstRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_ne_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_ne_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ConstRng {}

const COOKIE_SECRET_BYTE: u8 = 0xc5;
const INITIATOR_INDEX: u32 = 0x0102_0304;
const RESPONDER_INDEX: u32 = 0x0a0b_0c0d;
const UNIX_NANOS: u64 = 1_700_000_000_000_000_000;

/// Everything built once: keys, one valid message of each type, and the expected keys.
struct Fixture {
    now: Instant,
    from: SocketAddr,
    ik: StaticKeys,
    rk: StaticKeys,
    initiator_eid: sss_proto::Eid,
    initiation: Vec<u8>,
    response: Vec<u8>,
    cookie_reply: Vec<u8>,
    /// The cookie a responder with secret `[COOKIE_SECRET_BYTE; 32]` gives `from`.
    cookie: [u8; 16],
    /// The initiator's keys from the genuine response: (send, recv, handshake hash).
    keys: ([u8; 32], [u8; 32], [u8; 32]),
    /// Takes responses; kept across runs (`handle_response` takes `&self`).
    initiator: Initiator,
    /// Takes cookie replies (`&mut self`; a cookie only replaces the stored one).
    cookie_initiator: RefCell<Initiator>,
}

fn responder(f: &Fixture) -> Responder {
    Responder::new(
        f.rk.clone(),
        ResponderConfig::default(),
        f.now,
        &mut ConstRng(COOKIE_SECRET_BYTE),
    )
}

impl Fixture {
    fn new() -> Self {
        let now = Instant::now();
        let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let initiator_id = Identity::from_secret_bytes(&[0x11; 32]);
        let responder_id = Identity::from_secret_bytes(&[0x22; 32]);
        let ik = StaticKeys::new(&initiator_id);
        let rk = StaticKeys::new(&responder_id);
        let hello = Hello {
            service: "fuzz".into(),
            protocol: "fuzz/1".into(),
            params: TransportParams::default(),
        };
        let mut initiation = Vec::new();
        let initiator = Initiator::start(
            &ik,
            responder_id.eid(),
            INITIATOR_INDEX,
            &hello,
            UNIX_NANOS,
            &mut ConstRng(0x40),
            &mut initiation,
        )
        .unwrap();
        let cookie_initiator = Initiator::start(
            &ik,
            responder_id.eid(),
            INITIATOR_INDEX,
            &hello,
            UNIX_NANOS,
            &mut ConstRng(0x40),
            &mut Vec::new(),
        )
        .unwrap();
        let cookie = mac16(
            &[COOKIE_SECRET_BYTE; 32],
            &[&[192, 0, 2, 7], &40000u16.to_be_bytes()],
        );
        let mut f = Self {
            now,
            from,
            ik,
            rk,
            initiator_eid: initiator_id.eid(),
            initiation,
            response: Vec::new(),
            cookie_reply: Vec::new(),
            cookie,
            keys: ([0; 32], [0; 32], [0; 32]),
            initiator,
            cookie_initiator: RefCell::new(cookie_initiator),
        };
        let mut r = responder(&f);
        let mut cookie_reply = Vec::new();
        let sent = r
            .handle_initiation(
                now,
                from,
                &f.initiation,
                true,
                &mut ConstRng(0x77),
                &mut cookie_reply,
            )
            .unwrap();
        assert!(matches!(sent, Initiation::CookieSent));
        assert_eq!(cookie_reply.len(), COOKIE_REPLY_LEN);
        let Initiation::Valid(pending) = r
            .handle_initiation(
                now,
                from,
                &f.initiation,
                false,
                &mut ConstRng(0),
                &mut Vec::new(),
            )
            .unwrap()
        else {
            panic!("the fixture initiation is valid");
        };
        let reply = Reply::Accept {
            suite: Suite::ChaCha20Poly1305,
            params: TransportParams::default(),
        };
        let mut response = Vec::new();
        let rkeys = r
            .respond(
                pending,
                RESPONDER_INDEX,
                &reply,
                &mut ConstRng(0x80),
                &mut response,
            )
            .unwrap()
            .unwrap();
        let est = f.initiator.handle_response(&f.ik, &response).unwrap();
        assert_eq!(*est.keys.send, *rkeys.recv);
        f.keys = (*est.keys.send, *est.keys.recv, est.keys.handshake_hash);
        f.response = response;
        f.cookie_reply = cookie_reply;
        f
    }
}

thread_local! {
    static FIXTURE: Fixture = Fixture::new();
}

/// Flags of a structured input.
struct Flags {
    under_load: bool,
    mac1: bool,
    mac2: bool,
}

/// Applies the structured edits to `valid`; returns the edited message and its flags.
fn mutate(valid: &[u8], data: &[u8]) -> (Vec<u8>, Flags) {
    let flags_byte = data.first().copied().unwrap_or(0);
    let len_bytes = [
        data.get(1).copied().unwrap_or(0),
        data.get(2).copied().unwrap_or(0),
    ];
    let mut msg = valid.to_vec();
    if flags_byte & 8 != 0 {
        msg.resize(usize::from(u16::from_be_bytes(len_bytes)) % 1400, 0);
    }
    for edit in data.get(3..).unwrap_or(&[]).chunks_exact(3) {
        if msg.is_empty() {
            break;
        }
        let pos = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % msg.len();
        msg[pos] ^= edit[2];
    }
    let flags = Flags {
        under_load: flags_byte & 1 != 0,
        mac1: flags_byte & 2 != 0,
        mac2: flags_byte & 4 != 0,
    };
    (msg, flags)
}

/// Whether `a` and `b` have the same length and agree on every byte in `ranges`.
fn same_in(a: &[u8], b: &[u8], ranges: &[std::ops::Range<usize>]) -> bool {
    a.len() == b.len() && ranges.iter().all(|r| a[r.clone()] == b[r.clone()])
}

fn raw_initiation(f: &Fixture, msg: &[u8]) {
    for under_load in [false, true] {
        let mut r = responder(f);
        let mut out = vec![0xee; 3];
        let result =
            r.handle_initiation(f.now, f.from, msg, under_load, &mut ConstRng(9), &mut out);
        match result {
            Ok(Initiation::CookieSent) => {
                assert!(under_load);
                assert_eq!(out.len(), 3 + COOKIE_REPLY_LEN);
            }
            Ok(Initiation::Valid(_)) => assert_eq!(r.replay_table_len(), 1),
            Err(e) => {
                assert_eq!(out.len(), 3, "an error leaves `out` untouched");
                assert_eq!(r.replay_table_len(), 0);
                if msg.len() != INITIATION_LEN {
                    assert!(matches!(e, HandshakeError::Malformed(_)));
                }
            }
        }
    }
}

fn structured_initiation(f: &Fixture, data: &[u8]) {
    let (mut msg, flags) = mutate(&f.initiation, data);
    if msg.len() == INITIATION_LEN {
        // mac1 and mac2 as a sender that knows the responder's key (and the cookie) makes them.
        if flags.mac1 {
            let key = hash(&[LABEL_MAC1, &f.rk.public()]);
            let mac1 = mac16(&key, &[&msg[..field::INIT_MAC1.start]]);
            msg[field::INIT_MAC1].copy_from_slice(&mac1);
        }
        if flags.mac2 {
            let mac2 = mac16(&f.cookie, &[&msg[..field::INIT_MAC2.start]]);
            msg[field::INIT_MAC2].copy_from_slice(&mac2);
        }
    }
    let mut r = responder(f);
    let mut out = Vec::new();
    let result = r.handle_initiation(
        f.now,
        f.from,
        &msg,
        flags.under_load,
        &mut ConstRng(9),
        &mut out,
    );

    let right_len = msg.len() == INITIATION_LEN;
    // The responder checks, in order: length, header (type and reserved bytes), mac1, then
    // (under load) mac2, then the Noise handshake.
    let header_ok = right_len
        && msg[field::TYPE] == f.initiation[field::TYPE]
        && msg[field::RESERVED] == [0; 3];
    let mac1_ok = right_len && {
        let key = hash(&[LABEL_MAC1, &f.rk.public()]);
        mac16(&key, &[&msg[..field::INIT_MAC1.start]])[..] == msg[field::INIT_MAC1]
    };
    let mac2_ok = right_len
        && mac16(&f.cookie, &[&msg[..field::INIT_MAC2.start]])[..] == msg[field::INIT_MAC2];
    // Everything but the sender index (covered by mac1 only) and the macs is authenticated
    // by the Noise handshake itself.
    let authenticated_intact = same_in(
        &msg,
        &f.initiation,
        &[
            0..field::INIT_SENDER.start,
            field::INIT_SENDER.end..field::INIT_MAC1.start,
        ],
    );
    match result {
        Ok(Initiation::CookieSent) => {
            assert!(header_ok && mac1_ok && flags.under_load && !mac2_ok);
            assert_eq!(out.len(), COOKIE_REPLY_LEN);
        }
        Ok(Initiation::Valid(pending)) => {
            assert!(
                mac1_ok && authenticated_intact,
                "an altered initiation was accepted"
            );
            assert!(!flags.under_load || mac2_ok);
            assert_eq!(pending.remote(), f.initiator_eid);
            let index = u32::from_be_bytes(msg[field::INIT_SENDER].try_into().unwrap());
            assert_eq!(pending.initiator_index(), index);
        }
        Err(e) => {
            assert!(out.is_empty());
            if !right_len || !header_ok {
                // The header check runs before mac1 and mac2: a bad type or reserved byte
                // wins even with a valid mac1 under load (no cookie for it).
                assert!(matches!(e, HandshakeError::Malformed(_)), "{e:?}");
            } else if !mac1_ok {
                assert!(matches!(e, HandshakeError::Mac1), "{e:?}");
            } else {
                assert!(
                    !flags.under_load || mac2_ok,
                    "under load needs a cookie: {e:?}"
                );
                assert!(
                    !authenticated_intact,
                    "the unaltered initiation failed: {e:?}"
                );
            }
        }
    }
}

fn structured_response(f: &Fixture, data: &[u8]) {
    let (mut msg, flags) = mutate(&f.response, data);
    let len = msg.len();
    let mac1_key = hash(&[LABEL_MAC1, &f.ik.public()]);
    if flags.mac1 && len >= 32 {
        let mac1 = mac16(&mac1_key, &[&msg[..len - 32]]);
        msg[len - 32..len - 16].copy_from_slice(&mac1);
    }
    let result = f.initiator.handle_response(&f.ik, &msg);
    let ok_expected = len == f.response.len()
        && mac16(&mac1_key, &[&msg[..len - 32]])[..] == msg[len - 32..len - 16]
        && msg[len - 16..] == [0; 16]
        && same_in(
            &msg,
            &f.response,
            &[
                0..field::RESP_SENDER.start,
                field::RESP_SENDER.end..len - 32,
            ],
        );
    match result {
        Ok(est) => {
            assert!(ok_expected, "an altered response was accepted");
            let index = u32::from_be_bytes(msg[field::RESP_SENDER].try_into().unwrap());
            assert_eq!(est.remote_index, index);
            assert_eq!(
                (*est.keys.send, *est.keys.recv, est.keys.handshake_hash),
                f.keys
            );
        }
        Err(e) => assert!(!ok_expected, "the unaltered response failed: {e:?}"),
    }
}

fn structured_cookie_reply(f: &Fixture, data: &[u8]) {
    let (msg, _) = mutate(&f.cookie_reply, data);
    let result = f
        .cookie_initiator
        .borrow_mut()
        .handle_cookie_reply(f.now, &msg);
    // Every byte of a cookie reply is checked: framing, index, and the AEAD (nonce, cookie,
    // tag, bound to our mac1).
    match result {
        Ok(()) => assert_eq!(msg, f.cookie_reply, "an altered cookie reply was accepted"),
        Err(e) => assert_ne!(
            msg, f.cookie_reply,
            "the genuine cookie reply failed: {e:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    FIXTURE.with(|f| match mode % 6 {
        0 => raw_initiation(f, rest),
        1 => {
            // Whatever arrives, the initiator keeps waiting or completes; it never panics.
            let _ = f.initiator.handle_response(&f.ik, rest);
        }
        2 => {
            let _ = f
                .cookie_initiator
                .borrow_mut()
                .handle_cookie_reply(f.now, rest);
        }
        3 => structured_initiation(f, rest),
        4 => structured_response(f, rest),
        _ => structured_cookie_reply(f, rest),
    });
});
