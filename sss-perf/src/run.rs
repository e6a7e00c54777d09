//! Dispatch from a [`StackKind`] to the stack's types; everything after binding is the
//! shared, generic workload.

use std::net::SocketAddr;
use std::path::Path;

use crate::client::{self, RequestsPlan, UploadPlan};
use crate::error::Result;
use crate::quinn_stack::{QuinnDialer, QuinnListener};
use crate::serve;
use crate::sss_stack::{SssDialer, SssListener};
use crate::stack::{Listener, StackKind, Target};
use crate::stats::{RequestsReport, UploadReport};
use crate::tuning::Tuning;

/// Binds a server, reports `(identity, bound address)` through `ready`, then serves forever.
pub async fn server(
    stack: StackKind,
    addr: SocketAddr,
    key_file: Option<&Path>,
    tuning: &Tuning,
    ready: impl FnOnce(&str, SocketAddr),
) -> Result<()> {
    match stack {
        StackKind::Quinn => announce(QuinnListener::bind(addr, key_file, tuning)?, ready).await,
        StackKind::Sss => announce(SssListener::bind(addr, key_file, tuning)?, ready).await,
    }
}

async fn announce<L: Listener>(listener: L, ready: impl FnOnce(&str, SocketAddr)) -> Result<()> {
    ready(&listener.identity(), listener.local_addr()?);
    serve::serve(listener).await
}

/// Runs a bulk upload against `target`.
pub async fn upload(
    stack: StackKind,
    target: &Target,
    tuning: &Tuning,
    plan: UploadPlan,
) -> Result<UploadReport> {
    match stack {
        StackKind::Quinn => client::upload(&QuinnDialer::bind(target, tuning)?, target, plan).await,
        StackKind::Sss => client::upload(&SssDialer::bind(target, tuning)?, target, plan).await,
    }
}

/// Runs request/response round trips against `target`.
pub async fn requests(
    stack: StackKind,
    target: &Target,
    tuning: &Tuning,
    plan: RequestsPlan,
) -> Result<RequestsReport> {
    match stack {
        StackKind::Quinn => {
            client::requests(&QuinnDialer::bind(target, tuning)?, target, plan).await
        }
        StackKind::Sss => client::requests(&SssDialer::bind(target, tuning)?, target, plan).await,
    }
}
