//! The initiator: writes the initiation (`-> e, es, s, ss`), takes cookie replies and
//! retries, and completes the handshake with the response (`<- e, ee, se`).

use std::time::Instant;

use rand_core::CryptoRngCore;

use crate::crypto::noise::{ct_eq, dh, hash, mac16, DhKey, Key, SymmetricState};
use crate::identity::Eid;

use super::cookie::{cookie_reply_index, open_cookie_reply, Cookie, COOKIE_SECRET_LIFETIME};
use super::messages::{
    early_capacity, field, Hello, InitPayload, Reply, Timestamp, MAX_RESPONSE_LEN, RESP_OVERHEAD,
};
use super::{
    check_header, read_key, read_u32, HandshakeError, Keys, StaticKeys, LABEL_COOKIE, LABEL_MAC1,
    PROLOGUE, TYPE_INITIATION, TYPE_RESPONSE,
};

/// Established: the handshake completed (the responder accepted or refused).
#[derive(Debug)]
pub struct Established {
    /// The transport keys. Meaningful only if `reply` accepts; drop them otherwise.
    pub keys: Keys,
    /// The responder's index: put it in every packet sent to the responder.
    pub remote_index: u32,
    /// The responder's answer.
    pub reply: Reply,
}

/// What the initiator keeps of the initiation it sent last.
struct Sent {
    ephemeral: DhKey,
    state: SymmetricState,
    mac1: [u8; 16],
}

/// A handshake in progress on the initiator's side.
pub struct Initiator {
    remote: Eid,
    remote_static: [u8; 32],
    local_eid: Eid,
    local_index: u32,
    hello: Hello,
    /// `DH(s, rs)`, the same for every retry.
    static_static: Key,
    /// `HASH(LABEL_MAC1 || rs)`.
    mac1_key: [u8; 32],
    /// `HASH(LABEL_COOKIE || rs)`.
    cookie_key: [u8; 32],
    last_timestamp: Timestamp,
    /// The last initiation sent; `None` until [`Initiator::send_first`].
    sent: Option<Sent>,
    /// The ephemeral key of the first initiation, until it is written.
    first_ephemeral: Option<DhKey>,
    /// Early data: the same bytes in every initiation of this handshake.
    early: Vec<u8>,
    early_capacity: usize,
    cookie: Option<(Cookie, Instant)>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("remote", &self.remote)
            .field("local_index", &self.local_index)
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake with `remote`: appends a complete 1200-byte initiation to `out`.
    ///
    /// `unix_nanos` is the wall-clock time (nanoseconds since 1970); the responder rejects an
    /// initiation that is not newer than the last one it accepted from this host.
    pub fn start(
        local: &StaticKeys,
        remote: Eid,
        local_index: u32,
        hello: &Hello,
        unix_nanos: u64,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        let ephemeral = DhKey::generate(rng);
        Self::start_with_ephemeral(
            local,
            remote,
            local_index,
            hello,
            unix_nanos,
            ephemeral,
            out,
        )
    }

    /// [`Initiator::start`] with the ephemeral key pair made beforehand (its fixed-base
    /// scalar multiplication off the connection's critical path). `ephemeral` must be fresh
    /// and used for nothing else.
    pub fn start_with_ephemeral(
        local: &StaticKeys,
        remote: Eid,
        local_index: u32,
        hello: &Hello,
        unix_nanos: u64,
        ephemeral: DhKey,
        out: &mut Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        let mut this = Self::prepare(local, remote, local_index, hello, unix_nanos, ephemeral)?;
        this.send_first(local, &[], out)?;
        Ok(this)
    }

    /// Prepares a handshake with `remote` without writing the initiation yet: everything
    /// that does not depend on the early data is checked and computed (`DH(s, rs)`), and
    /// [`Initiator::send_first`] writes the initiation once the early data is known.
    /// `ephemeral` must be fresh and used for nothing else; `unix_nanos` is the wall-clock
    /// time of the initiation's timestamp.
    pub fn prepare(
        local: &StaticKeys,
        remote: Eid,
        local_index: u32,
        hello: &Hello,
        unix_nanos: u64,
        ephemeral: DhKey,
    ) -> Result<Self, HandshakeError> {
        let early_capacity = early_capacity(hello)?;
        let remote_static = remote.x25519_public();
        let static_static = dh(&local.secret, &remote_static)?;
        let timestamp = Timestamp::from_unix_nanos(unix_nanos);
        Ok(Self {
            remote,
            remote_static,
            local_eid: local.eid,
            local_index,
            hello: hello.clone(),
            static_static,
            mac1_key: hash(&[LABEL_MAC1, &remote_static]),
            cookie_key: hash(&[LABEL_COOKIE, &remote_static]),
            last_timestamp: timestamp,
            sent: None,
            first_ephemeral: Some(ephemeral),
            early: Vec::new(),
            early_capacity,
            cookie: None,
        })
    }

    /// The most early data the initiation can carry (`spec/handshake.md` §3.4): what the
    /// service, protocol and transport parameters leave of the payload.
    pub fn early_capacity(&self) -> usize {
        self.early_capacity
    }

    /// The early data this handshake's initiations carry.
    pub fn early_data(&self) -> &[u8] {
        &self.early
    }

    /// Whether the first initiation was written.
    pub fn is_sent(&self) -> bool {
        self.sent.is_some()
    }

    /// Writes the first initiation of a [prepared](Initiator::prepare) handshake, carrying
    /// `early` (at most [`early_capacity`](Initiator::early_capacity) bytes; every retry
    /// carries the same). On error `out` is left as it was and nothing changes.
    pub fn send_first(
        &mut self,
        local: &StaticKeys,
        early: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), HandshakeError> {
        self.check_local(local)?;
        if early.len() > self.early_capacity {
            return Err(HandshakeError::InvalidArgument("early data too large"));
        }
        let Some(ephemeral) = self.first_ephemeral.take() else {
            return Err(HandshakeError::InvalidArgument(
                "the first initiation was already sent",
            ));
        };
        self.early = early.to_vec();
        let timestamp = self.last_timestamp;
        match self.write_initiation(local, ephemeral.clone(), timestamp, None, out) {
            Ok(sent) => {
                self.sent = Some(sent);
                Ok(())
            }
            Err(e) => {
                self.first_ephemeral = Some(ephemeral);
                self.early.clear();
                Err(e)
            }
        }
    }

    /// Sends a new initiation for this handshake (after a timeout or a cookie reply): fresh
    /// ephemeral key and timestamp, and mac2 from the last cookie if it is younger than
    /// [`COOKIE_SECRET_LIFETIME`]. A response to the previous initiation is no longer accepted.
    pub fn retry(
        &mut self,
        local: &StaticKeys,
        now: Instant,
        unix_nanos: u64,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<(), HandshakeError> {
        self.check_local(local)?;
        if self.sent.is_none() {
            return Err(HandshakeError::InvalidArgument(
                "retry before the first initiation",
            ));
        }
        // Strictly increasing even if the wall clock stands still or steps back.
        let next = self
            .last_timestamp
            .unix_nanos()
            .saturating_add(1)
            .max(unix_nanos);
        let timestamp = Timestamp::from_unix_nanos(next);
        self.cookie = self.cookie.filter(|(_, received)| {
            now.saturating_duration_since(*received) < COOKIE_SECRET_LIFETIME
        });
        let cookie = self.cookie.map(|(c, _)| c);
        self.sent = Some(self.write_initiation(
            local,
            DhKey::generate(rng),
            timestamp,
            cookie.as_ref(),
            out,
        )?);
        self.last_timestamp = timestamp;
        Ok(())
    }

    /// Takes a cookie reply to our last initiation; the next [`Initiator::retry`] uses it.
    pub fn handle_cookie_reply(&mut self, now: Instant, msg: &[u8]) -> Result<(), HandshakeError> {
        if cookie_reply_index(msg)? != self.local_index {
            return Err(HandshakeError::WrongIndex);
        }
        let sent = self.sent.as_ref().ok_or(HandshakeError::WrongIndex)?;
        let cookie = open_cookie_reply(&self.cookie_key, &sent.mac1, msg)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }

    /// Completes the handshake with the response to our last initiation. `&self`: a forged
    /// or corrupted response leaves the initiator able to take the genuine one.
    pub fn handle_response(
        &self,
        local: &StaticKeys,
        msg: &[u8],
    ) -> Result<Established, HandshakeError> {
        self.check_local(local)?;
        let sent = self.sent.as_ref().ok_or(HandshakeError::WrongIndex)?;
        if msg.len() <= RESP_OVERHEAD || msg.len() > MAX_RESPONSE_LEN {
            return Err(HandshakeError::Malformed(
                "response has an impossible length",
            ));
        }
        check_header(msg, TYPE_RESPONSE, "not a response")?;
        if read_u32(msg, field::RESP_RECEIVER) != self.local_index {
            return Err(HandshakeError::WrongIndex);
        }
        let mac1_at = msg.len() - 32;
        let mac2_at = msg.len() - 16;
        // msg.mac1 = MAC(HASH(LABEL_MAC1 || initiator.static_public), msg[0:offsetof(msg.mac1)])
        if !ct_eq(
            &mac16(&local.mac1_key, &[&msg[..mac1_at]]),
            &msg[mac1_at..mac2_at],
        ) {
            return Err(HandshakeError::Mac1);
        }
        // Initiators never send cookie replies, so a response's mac2 is always zero.
        if msg[mac2_at..] != [0u8; 16] {
            return Err(HandshakeError::Malformed("mac2 of a response is not zero"));
        }

        let mut state = sent.state.clone();
        // <- e: responder.ephemeral_public = msg.ephemeral; MixHash(re)
        let re = read_key(msg, field::RESP_EPHEMERAL);
        state.mix_hash(&re);
        // ee: MixKey(DH(e, re))
        state.mix_key(&dh(&sent.ephemeral, &re)?[..]);
        // se: MixKey(DH(s, re)) on the initiator's side
        state.mix_key(&dh(&local.secret, &re)?[..]);
        // payload = DecryptAndHash(msg.encrypted_payload)
        let payload = state.decrypt_and_hash(&msg[field::RESP_EPHEMERAL.end..mac1_at])?;
        let reply = Reply::decode(&payload)?;
        if let Reply::Accept { suite, .. } = &reply {
            if self.hello.params.suites & suite.bit() == 0 {
                return Err(HandshakeError::SuiteNotOffered);
            }
        }
        // k1, k2 = Split(); the initiator sends with k1
        let (k1, k2) = state.split();
        Ok(Established {
            keys: Keys {
                send: k1,
                recv: k2,
                handshake_hash: state.handshake_hash(),
            },
            remote_index: read_u32(msg, field::RESP_SENDER),
            reply,
        })
    }

    /// The responder's EID.
    pub fn remote(&self) -> Eid {
        self.remote
    }

    /// Our index for this handshake (the responder echoes it).
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// What we asked for.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    fn check_local(&self, local: &StaticKeys) -> Result<(), HandshakeError> {
        if local.eid != self.local_eid {
            return Err(HandshakeError::InvalidArgument(
                "static keys differ from those of start()",
            ));
        }
        Ok(())
    }

    /// Appends an initiation; on error `out` is left as it was.
    fn write_initiation(
        &self,
        local: &StaticKeys,
        ephemeral: DhKey,
        timestamp: Timestamp,
        cookie: Option<&Cookie>,
        out: &mut Vec<u8>,
    ) -> Result<Sent, HandshakeError> {
        let start = out.len();
        let result = self.write_initiation_inner(local, ephemeral, timestamp, cookie, out, start);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write_initiation_inner(
        &self,
        local: &StaticKeys,
        ephemeral: DhKey,
        timestamp: Timestamp,
        cookie: Option<&Cookie>,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<Sent, HandshakeError> {
        // h = protocol_name; ck = h; MixHash(prologue)
        let mut state = SymmetricState::new(PROLOGUE);
        // pre-message <- s: MixHash(rs)
        state.mix_hash(&self.remote_static);
        // msg.type = 1; msg.reserved = 0; msg.sender_index = big_endian(initiator.index)
        out.push(TYPE_INITIATION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.local_index.to_be_bytes());
        // -> e: msg.ephemeral = DH_PUBKEY(e); MixHash(e.public)
        let e_public = *ephemeral.public();
        out.extend_from_slice(&e_public);
        state.mix_hash(&e_public);
        // es: MixKey(DH(e, rs))
        state.mix_key(&dh(&ephemeral, &self.remote_static)?[..]);
        // s: msg.encrypted_static = EncryptAndHash(s.public)
        let at = out.len();
        out.extend_from_slice(&local.public);
        state.encrypt_and_hash(out, at);
        // ss: MixKey(DH(s, rs))
        state.mix_key(&self.static_static[..]);
        // msg.encrypted_payload = EncryptAndHash(timestamp || eid || hello || early || padding)
        let at = out.len();
        InitPayload {
            timestamp,
            eid: self.local_eid,
            hello: self.hello.clone(),
            early: self.early.clone(),
        }
        .encode(out)?;
        state.encrypt_and_hash(out, at);
        // msg.mac1 = MAC(HASH(LABEL_MAC1 || responder.static_public), msg[0:offsetof(msg.mac1)])
        let mac1 = mac16(&self.mac1_key, &[&out[start..]]);
        out.extend_from_slice(&mac1);
        // msg.mac2 = cookie ? MAC(cookie, msg[0:offsetof(msg.mac2)]) : 0^16
        let mac2 = cookie.map_or([0; 16], |c| mac16(c, &[&out[start..]]));
        out.extend_from_slice(&mac2);
        debug_assert_eq!(out.len() - start, super::INITIATION_LEN);
        Ok(Sent {
            ephemeral,
            state,
            mac1,
        })
    }
}
