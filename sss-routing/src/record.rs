//! Signed records (spec/routing.md §4.2): what a host says about where it can be reached,
//! signed by its key and bound to one regserver, one cookie and one observed endpoint.

use std::net::SocketAddr;

use sss_proto::codec::Reader;
use sss_proto::{Eid, Identity};

use crate::wire::{read_eid, read_endpoint, write_endpoint, Cookie, WireError, COOKIE_LEN};

/// Most endpoints a host may report in one record.
pub const MAX_REPORTED: usize = 8;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Largest encoded record (IPv6 everywhere, [`MAX_REPORTED`] endpoints).
pub const MAX_RECORD_LEN: usize = 32 + 32 + 8 + 4 + COOKIE_LEN + 19 + 1 + MAX_REPORTED * 19 + 64;

/// Domain separation of record signatures.
const SIGNATURE_LABEL: &[u8] = b"sss/1 routing record";

/// The signed content of a record.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct RecordBody {
    /// The host the record speaks for (and whose key signs it).
    pub eid: Eid,
    /// The EID of the regserver the record is made for.
    pub server: Eid,
    /// Sequence number; every new record of a host for a server is larger.
    pub seq: u64,
    /// Seconds the host asks the server to keep the record.
    pub lifetime: u32,
    /// The cookie the REGISTER carrying this record is made with.
    pub cookie: Cookie,
    /// The host's endpoint as the server observed it.
    pub observed: SocketAddr,
    /// Endpoints the host reports (at most [`MAX_REPORTED`]).
    pub reported: Vec<SocketAddr>,
}

impl RecordBody {
    /// Appends the signed fields (everything but the signature).
    fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.eid.as_bytes());
        buf.extend_from_slice(self.server.as_bytes());
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.lifetime.to_be_bytes());
        buf.extend_from_slice(&self.cookie);
        write_endpoint(buf, self.observed);
        // Callers keep `reported` within MAX_REPORTED (`sign` truncates).
        buf.push(self.reported.len() as u8);
        for ep in &self.reported {
            write_endpoint(buf, *ep);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let eid = read_eid(r)?;
        let server = read_eid(r)?;
        let seq = r.u64()?;
        let lifetime = r.u32()?;
        let cookie = r.array()?;
        let observed = read_endpoint(r)?;
        let count = usize::from(r.u8()?);
        if count > MAX_REPORTED {
            return Err(WireError::TooManyEndpoints(count));
        }
        let mut reported = Vec::with_capacity(count);
        for _ in 0..count {
            reported.push(read_endpoint(r)?);
        }
        Ok(Self {
            eid,
            server,
            seq,
            lifetime,
            cookie,
            observed,
            reported,
        })
    }

    /// The bytes the signature covers: the label, then the encoded fields.
    fn signed_message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(SIGNATURE_LABEL.len() + MAX_RECORD_LEN);
        msg.extend_from_slice(SIGNATURE_LABEL);
        self.encode(&mut msg);
        msg
    }
}

/// A record with its signature, as it travels in REGISTER, LOOKUP_REPLY and NOTIFY.
///
/// Decoding does not verify the signature (it is costly; servers check the cookie first):
/// call [`SignedRecord::verify`].
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct SignedRecord {
    /// The signed content.
    pub body: RecordBody,
    /// Ed25519 signature by `body.eid` over the label and the body.
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedRecord {
    /// Signs `body` with `identity`. The body's `eid` is set to the identity's EID and its
    /// reported endpoints are cut to [`MAX_REPORTED`].
    pub fn sign(identity: &Identity, mut body: RecordBody) -> Self {
        body.eid = identity.eid();
        body.reported.truncate(MAX_REPORTED);
        let signature = identity.sign(&body.signed_message());
        Self { body, signature }
    }

    /// Whether the signature is `body.eid`'s over the body.
    pub fn verify(&self) -> bool {
        self.body
            .eid
            .verify(&self.body.signed_message(), &self.signature)
    }

    /// Whether the record verifies and is the record of `eid` made for `server`.
    pub fn is_valid_for(&self, eid: &Eid, server: &Eid) -> bool {
        self.body.eid == *eid && self.body.server == *server && self.verify()
    }

    /// The endpoints to try to reach the host at: the observed one first, then the reported
    /// ones, without duplicates.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let mut out = vec![self.body.observed];
        for ep in &self.body.reported {
            if !out.contains(ep) {
                out.push(*ep);
            }
        }
        out
    }

    /// Appends the encoded record.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        self.body.encode(buf);
        buf.extend_from_slice(&self.signature);
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        let ep = |a: &SocketAddr| if a.is_ipv4() { 7 } else { 19 };
        32 + 32
            + 8
            + 4
            + COOKIE_LEN
            + ep(&self.body.observed)
            + 1
            + self.body.reported.iter().map(ep).sum::<usize>()
            + SIGNATURE_LEN
    }

    /// Reads a record (signature not verified).
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let body = RecordBody::decode(r)?;
        let signature = r.array()?;
        Ok(Self { body, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    fn body(eid: Eid, server: Eid) -> RecordBody {
        RecordBody {
            eid,
            server,
            seq: 7,
            lifetime: 600,
            cookie: [3; COOKIE_LEN],
            observed: "192.0.2.1:4000".parse().unwrap(),
            reported: vec![
                "10.0.0.2:4000".parse().unwrap(),
                "[fe80::1]:4000".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn signed_record_verifies_and_any_change_breaks_it() {
        let host = identity(1);
        let server = identity(2).eid();
        let rec = SignedRecord::sign(&host, body(host.eid(), server));
        assert!(rec.verify());
        assert!(rec.is_valid_for(&host.eid(), &server));
        assert!(!rec.is_valid_for(&host.eid(), &host.eid()), "wrong server");

        let mut seq = rec.clone();
        seq.body.seq += 1;
        assert!(!seq.verify());
        let mut ep = rec.clone();
        ep.body.reported[0] = "10.0.0.3:4000".parse().unwrap();
        assert!(!ep.verify());
        let mut sig = rec.clone();
        sig.signature[5] ^= 1;
        assert!(!sig.verify());
        // Someone else's key over the same body, claiming the host's EID.
        let mallory = identity(3);
        let mut forged = SignedRecord::sign(&mallory, body(host.eid(), server));
        forged.body.eid = host.eid();
        assert!(!forged.verify());
    }

    #[test]
    fn encoded_len_matches_and_max_is_bounded() {
        let host = identity(1);
        let mut b = body(host.eid(), identity(2).eid());
        b.observed = "[2001:db8::1]:1".parse().unwrap();
        b.reported = vec!["[2001:db8::2]:2".parse().unwrap(); 12];
        let rec = SignedRecord::sign(&host, b);
        assert_eq!(rec.body.reported.len(), MAX_REPORTED);
        let mut buf = Vec::new();
        rec.encode(&mut buf);
        assert_eq!(buf.len(), rec.encoded_len());
        assert_eq!(buf.len(), MAX_RECORD_LEN);
    }
}
