//! Shared test setups on top of `sss_proto::testkit`.
#![allow(dead_code, unreachable_pub)]

pub mod setup;

pub use sss_proto::testkit::host;
pub use sss_proto::testkit::{addr, identity, Bulk, TestHost, UNIX_NANOS};
