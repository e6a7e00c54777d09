//! The responder: checks initiations cheaply before doing any Diffie-Hellman work, answers
//! with cookie replies under load, authenticates and de-duplicates initiations, and writes
//! the response (`<- e, ee, se`).

use std::net::SocketAddr;
use std::time::Instant;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::crypto::noise::{ct_eq, dh, hash, mac16, DhKey, Key, SymmetricState};
use crate::identity::Eid;

use super::cookie::{write_cookie_reply, CookieSecrets};
use super::messages::{
    field, Hello, InitPayload, Reply, Timestamp, MAX_RESPONSE_LEN, RESP_OVERHEAD,
};
use super::replay::{ReplayTable, DEFAULT_REPLAY_TABLE_CAPACITY};
use super::{
    check_header, read_key, read_u32, HandshakeError, Keys, StaticKeys, INITIATION_LEN, LABEL_MAC1,
    TYPE_INITIATION, TYPE_RESPONSE,
};

/// Settings of a [`Responder`].
#[derive(Debug, Clone, Copy, Eq, PartialEq)]
pub struct ResponderConfig {
    /// How many initiators the replay table remembers (see `spec/handshake.md`).
    pub replay_table_capacity: usize,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        Self {
            replay_table_capacity: DEFAULT_REPLAY_TABLE_CAPACITY,
        }
    }
}

/// The outcome of a well-formed initiation.
#[derive(Debug)]
// Returned once per handshake and matched at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Initiation {
    /// We are under load and the initiation had no valid mac2: a cookie reply was appended to
    /// `out`. Nothing else was done or kept.
    CookieSent,
    /// An authenticated, fresh initiation: answer it with [`Responder::respond`].
    Valid(PendingInitiation),
}

/// An authenticated, fresh initiation awaiting the application's accept or refuse.
pub struct PendingInitiation {
    state: SymmetricState,
    initiator_ephemeral: [u8; 32],
    initiator_static: [u8; 32],
    remote: Eid,
    initiator_index: u32,
    hello: Hello,
    timestamp: Timestamp,
    early: Vec<u8>,
}

impl PendingInitiation {
    /// The early data (`spec/handshake.md` §3.4): the initiator's channel frames of its
    /// packet number 0, authenticated with the initiation; empty if none. Replayable in
    /// principle: see §9 before using it.
    pub fn early_data(&self) -> &[u8] {
        &self.early
    }

    /// Takes the early data out, leaving none.
    pub fn take_early_data(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.early)
    }

    /// The initiator's EID (authenticated).
    pub fn remote(&self) -> Eid {
        self.remote
    }

    /// The initiator's index: put it in every packet sent to the initiator.
    pub fn initiator_index(&self) -> u32 {
        self.initiator_index
    }

    /// What the initiator asks for.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The initiation's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
}

impl std::fmt::Debug for PendingInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingInitiation")
            .field("remote", &self.remote)
            .field("initiator_index", &self.initiator_index)
            .field("hello", &self.hello)
            .field("early_len", &self.early.len())
            .finish_non_exhaustive()
    }
}

/// The responder side of the handshake for one host (all initiators).
pub struct Responder {
    local: StaticKeys,
    cookies: CookieSecrets,
    replay: ReplayTable,
    ss_cache: SsCache,
}

/// Static-static DH results by initiator static key: a returning initiator costs one DH
/// less. Bounded; the oldest entry goes first.
struct SsCache {
    map: std::collections::BTreeMap<[u8; 32], Key>,
    order: std::collections::VecDeque<[u8; 32]>,
}

/// Entries kept in the static-static DH cache.
const SS_CACHE_CAPACITY: usize = 4096;

impl SsCache {
    fn get_or_compute(&mut self, local: &DhKey, remote: &[u8; 32]) -> Result<Key, HandshakeError> {
        if let Some(k) = self.map.get(remote) {
            return Ok(k.clone());
        }
        let k = dh(local, remote)?;
        if self.order.len() >= SS_CACHE_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.order.push_back(*remote);
        self.map.insert(*remote, k.clone());
        Ok(k)
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("local", &self.local)
            .field("replay_table_len", &self.replay.len())
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder for `local`. Draws its first cookie secret (32 bytes) from `rng`.
    pub fn new(
        local: StaticKeys,
        config: ResponderConfig,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        Self {
            local,
            cookies: CookieSecrets::new(now, rng),
            replay: ReplayTable::new(config.replay_table_capacity),
            ss_cache: SsCache {
                map: std::collections::BTreeMap::new(),
                order: std::collections::VecDeque::new(),
            },
        }
    }

    /// Our static keys.
    pub fn local(&self) -> &StaticKeys {
        &self.local
    }

    /// Number of initiators in the replay table.
    pub fn replay_table_len(&self) -> usize {
        self.replay.len()
    }

    /// The replay floor: initiators not in the table must be newer than this.
    pub fn replay_floor(&self) -> Option<Timestamp> {
        self.replay.floor()
    }

    /// Raises the replay floor, e.g. to the wall-clock time at start-up minus the clock skew
    /// to tolerate, so that initiations made before a restart cannot be replayed after it.
    pub fn raise_replay_floor(&mut self, floor: Timestamp) {
        self.replay.raise_floor(floor);
    }

    /// Processes an initiation that arrived from `from`.
    ///
    /// The checks run cheapest first: length and header, mac1, and (when `under_load`) mac2,
    /// all before any Diffie-Hellman; an initiation without a valid mac2 under load gets a
    /// cookie reply appended to `out` and leaves no state. The replay table records the
    /// initiation only once it fully authenticated.
    pub fn handle_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &[u8],
        under_load: bool,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<Initiation, HandshakeError> {
        if msg.len() != INITIATION_LEN {
            return Err(HandshakeError::Malformed("initiation is not 1200 bytes"));
        }
        check_header(msg, TYPE_INITIATION, "not an initiation")?;
        let initiator_index = read_u32(msg, field::INIT_SENDER);
        // msg.mac1 = MAC(HASH(LABEL_MAC1 || responder.static_public), msg[0:offsetof(msg.mac1)])
        let mac1 = &msg[field::INIT_MAC1];
        if !ct_eq(
            &mac16(&self.local.mac1_key, &[&msg[..field::INIT_MAC1.start]]),
            mac1,
        ) {
            return Err(HandshakeError::Mac1);
        }
        if under_load {
            self.cookies.rotate(now, rng);
            // msg.mac2 = MAC(cookie, msg[0:offsetof(msg.mac2)])
            if !self.cookies.mac2_is_valid(
                from,
                &msg[..field::INIT_MAC2.start],
                &msg[field::INIT_MAC2],
            ) {
                let cookie = self.cookies.current_cookie(from);
                write_cookie_reply(
                    &self.local.cookie_key,
                    initiator_index,
                    mac1,
                    &cookie,
                    rng,
                    out,
                );
                return Ok(Initiation::CookieSent);
            }
        }

        // h = protocol_name; ck = h; MixHash(prologue); pre-message <- s: MixHash(s.public)
        let mut state = SymmetricState::new(super::PROLOGUE);
        state.mix_hash(&self.local.public);
        // -> e: re = msg.ephemeral; MixHash(re)
        let re = read_key(msg, field::INIT_EPHEMERAL);
        state.mix_hash(&re);
        // es: MixKey(DH(s, re)) on the responder's side
        state.mix_key(&dh(&self.local.secret, &re)?[..]);
        // s: rs = DecryptAndHash(msg.encrypted_static)
        let rs = state.decrypt_and_hash(&msg[field::INIT_STATIC])?;
        let rs: [u8; 32] = rs[..]
            .try_into()
            .map_err(|_| HandshakeError::Malformed("static key is not 32 bytes"))?;
        // ss: MixKey(DH(s, rs)), cached per initiator static key
        let ss = self.ss_cache.get_or_compute(&self.local.secret, &rs)?;
        state.mix_key(&ss[..]);
        // payload = DecryptAndHash(msg.encrypted_payload)
        let payload = state.decrypt_and_hash(&msg[field::INIT_PAYLOAD])?;
        let payload = InitPayload::decode(&payload)?;
        // The static key proved itself by ss; the EID must be the identity it belongs to.
        if !ct_eq(&payload.eid.x25519_public(), &rs) {
            return Err(HandshakeError::IdentityMismatch);
        }
        if !self.replay.is_fresh(&payload.eid, payload.timestamp) {
            return Err(HandshakeError::Replay);
        }
        self.replay.record(payload.eid, payload.timestamp);
        Ok(Initiation::Valid(PendingInitiation {
            state,
            initiator_ephemeral: re,
            initiator_static: rs,
            remote: payload.eid,
            initiator_index,
            hello: payload.hello,
            timestamp: payload.timestamp,
            early: payload.early,
        }))
    }

    /// Writes the response to `pending` (accept or refuse) into `out`; returns the transport
    /// keys iff `reply` accepts. Consumes `pending`, so an initiation is answered once.
    /// Draws the ephemeral key (32 bytes) from `rng`.
    pub fn respond(
        &mut self,
        pending: PendingInitiation,
        local_index: u32,
        reply: &Reply,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<Option<Keys>, HandshakeError> {
        let ephemeral = DhKey::generate(rng);
        self.respond_with_ephemeral(pending, local_index, reply, ephemeral, out)
    }

    /// [`Responder::respond`] with the ephemeral key pair made beforehand (its fixed-base
    /// scalar multiplication off the connection's critical path). `ephemeral` must be fresh
    /// and used for nothing else.
    pub fn respond_with_ephemeral(
        &mut self,
        pending: PendingInitiation,
        local_index: u32,
        reply: &Reply,
        ephemeral: DhKey,
        out: &mut Vec<u8>,
    ) -> Result<Option<Keys>, HandshakeError> {
        if let Reply::Accept { suite, .. } = reply {
            if pending.hello.params.suites & suite.bit() == 0 {
                return Err(HandshakeError::SuiteNotOffered);
            }
        }
        let mut payload = Zeroizing::new(Vec::new());
        reply.encode(&mut payload)?;
        if RESP_OVERHEAD + payload.len() > MAX_RESPONSE_LEN {
            return Err(HandshakeError::InvalidArgument("reply too large"));
        }
        // DH before writing anything, so that an error leaves `out` untouched.
        let ee = dh(&ephemeral, &pending.initiator_ephemeral)?;
        let se = dh(&ephemeral, &pending.initiator_static)?;

        let mut state = pending.state;
        let start = out.len();
        // msg.type = 2; msg.reserved = 0; msg.sender_index; msg.receiver_index
        out.push(TYPE_RESPONSE);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&local_index.to_be_bytes());
        out.extend_from_slice(&pending.initiator_index.to_be_bytes());
        // <- e: msg.ephemeral = DH_PUBKEY(e); MixHash(e.public)
        let e_public = *ephemeral.public();
        out.extend_from_slice(&e_public);
        state.mix_hash(&e_public);
        // ee: MixKey(DH(e, re))
        state.mix_key(&ee[..]);
        // se: MixKey(DH(e, rs)) on the responder's side
        state.mix_key(&se[..]);
        // msg.encrypted_payload = EncryptAndHash(reply)
        let at = out.len();
        out.extend_from_slice(&payload);
        state.encrypt_and_hash(out, at);
        // msg.mac1 = MAC(HASH(LABEL_MAC1 || initiator.static_public), msg[0:offsetof(msg.mac1)])
        let mac1_key = hash(&[LABEL_MAC1, &pending.initiator_static]);
        let mac1 = mac16(&mac1_key, &[&out[start..]]);
        out.extend_from_slice(&mac1);
        // msg.mac2 = 0^16 (initiators never send cookies)
        out.extend_from_slice(&[0; 16]);

        // k1, k2 = Split(); the responder sends with k2
        let (k1, k2) = state.split();
        Ok(matches!(reply, Reply::Accept { .. }).then(|| Keys {
            send: k2,
            recv: k1,
            handshake_hash: state.handshake_hash(),
        }))
    }
}
