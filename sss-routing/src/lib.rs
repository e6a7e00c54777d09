//! The sans-IO rendezvous protocol (not built yet): signed EID records, regserver client and
//! server state machines, hole-punch coordination and relay framing.
#![forbid(unsafe_code)]
