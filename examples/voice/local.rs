//! Both ends of a call in one process: an embedded regserver, two hosts on loopback, and
//! optionally the impairment relay between them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sss_host::{ChannelStats, Host, HostConfig, ImpairConfig, Relay, RelayStats};

use crate::call::{run_call, CallConfig, CallReport, PROTOCOL, SERVICE};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The two ends' reports, and the relay's counters if there was one.
#[derive(Debug)]
pub(crate) struct LocalCall {
    /// What the caller received (the callee's frames).
    pub(crate) caller: CallReport,
    /// What the callee received (the caller's frames, and the bulk transfer).
    pub(crate) callee: CallReport,
    /// The relay's counters.
    pub(crate) relay: Option<RelayStats>,
    /// How long dialing took.
    pub(crate) connect: Duration,
    /// The caller's channel to the callee at the end (it carried the bulk transfer).
    pub(crate) channel: Option<ChannelStats>,
}

/// Runs a call between two hosts of this process. The caller dials the callee by EID through
/// an embedded regserver, or, with `impair`, through the impairment relay (impaired both
/// ways). `config.bulk` makes the caller send a competing bulk transfer.
pub(crate) async fn call_locally(
    config: &CallConfig,
    impair: Option<ImpairConfig>,
    report: bool,
) -> Result<LocalCall, BoxError> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let reg_identity = sss_host::Identity::generate(&mut rand_core::OsRng);
    let reg =
        regserver::RegServer::bind(loopback, regserver::server_config(reg_identity.eid())).await?;
    let host_config = || {
        let mut c = HostConfig::bind(loopback);
        c.regservers = vec![(reg.eid(), reg.local_addr())];
        c
    };
    let caller = Host::new(host_config())?;
    let callee = Host::new(host_config())?;
    let listener = callee.listen(SERVICE, PROTOCOL)?;
    tokio::time::timeout(Duration::from_secs(10), async {
        caller.registered().await?;
        callee.registered().await
    })
    .await
    .map_err(|_| "registering with the embedded regserver took over 10 s")??;

    let relay = match impair {
        Some(i) => Some(Relay::start(loopback, callee.loopback_addr(), i)?),
        None => None,
    };
    let callee_config = CallConfig {
        bulk: false,
        report: report.then(|| "caller->callee".into()),
        ..config.clone()
    };
    let answer = tokio::spawn(async move {
        let call = listener.accept().await?;
        let r = run_call(call, &callee_config).await;
        drop(listener);
        r
    });
    let t = Instant::now();
    let call = match &relay {
        Some(relay) => {
            caller
                .connect(callee.eid(), &[relay.local_addr()], SERVICE, PROTOCOL)
                .await?
        }
        None => caller.connect_eid(callee.eid(), SERVICE, PROTOCOL).await?,
    };
    let connect = t.elapsed();
    let caller_config = CallConfig {
        report: report.then(|| "callee->caller".into()),
        ..config.clone()
    };
    let caller_report = run_call(call, &caller_config).await?;
    let callee_report = answer.await??;
    let channel = caller.stats(callee.eid());
    let relay_stats = relay.map(|r| {
        let s = r.stats();
        r.shutdown();
        s
    });
    caller.close().await;
    callee.close().await;
    Ok(LocalCall {
        caller: caller_report,
        callee: callee_report,
        relay: relay_stats,
        connect,
        channel,
    })
}
