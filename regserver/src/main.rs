//! `regserver`: the SSS rendezvous server. Hosts register their endpoints under their EID,
//! look each other up and get told to punch holes toward each other (spec/routing.md).
//!
//! ```text
//! regserver --bind 0.0.0.0:9669 --key /var/lib/regserver/key
//! ```
//!
//! At start it prints one line, `regserver eid=<EID> addr=<ADDR>`, on standard output: hosts
//! need both the EID and the address to register. Logs go to standard error (`RUST_LOG`,
//! default `info`). Ctrl-C or SIGTERM stops it cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use regserver::{load_or_create_identity, server_config, RegServer};

/// The SSS rendezvous server: resolves EIDs to endpoints and coordinates NAT hole punching.
#[derive(Debug, Parser)]
#[command(name = "regserver", version, about, long_about = None)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:9669")]
    bind: SocketAddr,
    /// The server's key file (its EID is the public key). Created, readable by the owner
    /// only, if missing; keep it so that the EID hosts know stays the same across restarts.
    #[arg(long)]
    key: PathBuf,
    /// Most records held (memory: about 0.5 kB each) [default: 100000].
    #[arg(long)]
    max_records: Option<usize>,
    /// Most records registered from one public IP address, i.e. hosts behind one NAT; raise
    /// it for carrier-grade NATs [default: 64].
    #[arg(long)]
    max_records_per_ip: Option<u32>,
    /// Requests per second one source IP may make once its burst is spent [default: 16].
    #[arg(long)]
    source_rate: Option<u32>,
    /// Requests one source IP may make in a burst [default: 32].
    #[arg(long)]
    source_burst: Option<u32>,
    /// Most relay slots held (spec/routing.md §6); 0 disables relaying [default: 1024].
    #[arg(long)]
    max_relays: Option<usize>,
    /// Most relay slots naming one host [default: 8].
    #[arg(long)]
    max_relays_per_host: Option<u32>,
    /// Bytes per second one relay slot forwards, both directions together, once its burst
    /// is spent [default: 1000000].
    #[arg(long)]
    relay_rate: Option<u32>,
    /// Bytes one relay slot may forward in a burst [default: 250000].
    #[arg(long)]
    relay_burst: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("regserver: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let (identity, created) = load_or_create_identity(&args.key).map_err(|e| e.to_string())?;
    if created {
        tracing::info!(path = %args.key.display(), "created a new key file");
    }
    let mut config = server_config(identity.eid());
    drop(identity); // the server signs nothing: only the EID is needed from here on
    if let Some(n) = args.max_records {
        config.max_records = n;
    }
    if let Some(n) = args.max_records_per_ip {
        config.max_records_per_ip = n;
    }
    if let Some(n) = args.source_rate {
        config.source_rate = n;
    }
    if let Some(n) = args.source_burst {
        config.source_burst = n;
    }
    if let Some(n) = args.max_relays {
        config.max_relays = n;
    }
    if let Some(n) = args.max_relays_per_host {
        config.max_relays_per_host = n;
    }
    if let Some(n) = args.relay_rate {
        config.relay_rate = n;
    }
    if let Some(n) = args.relay_burst {
        config.relay_burst = n;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(args.bind, config))
}

async fn serve(bind: SocketAddr, config: sss_routing::ServerConfig) -> Result<(), String> {
    let mut signals = Signals::new().map_err(|e| format!("cannot catch signals: {e}"))?;
    let mut server = RegServer::bind(bind, config)
        .await
        .map_err(|e| e.to_string())?;
    let (eid, addr) = (server.eid(), server.local_addr());
    println!("regserver eid={eid} addr={addr}");
    tracing::info!(%eid, %addr, "listening");
    if addr.ip().is_unspecified() {
        tracing::info!(
            port = addr.port(),
            "bound to every address: hosts use this machine's public address with this port"
        );
    }

    let signal = signals.recv().await;
    let stats = server.stats();
    match signal {
        Ok(name) => tracing::info!(
            signal = name,
            records = stats.records,
            datagrams_in = stats.datagrams_in,
            datagrams_out = stats.datagrams_out,
            relays_opened = stats.server.relays_opened,
            relayed_packets = stats.server.relayed_packets,
            relayed_bytes = stats.server.relayed_bytes,
            relay_dropped = stats.server.relay_dropped + stats.server.relay_over_budget,
            "stopping"
        ),
        Err(e) => return Err(format!("cannot wait for signals: {e}")),
    }
    server.shutdown_handle().shutdown();
    server.closed().await;
    Ok(())
}

/// Ctrl-C (SIGINT) and SIGTERM, caught from creation on (before the banner is printed, so a
/// supervisor that stops the server right after reading it gets a clean exit).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for one and names it.
    async fn recv(&mut self) -> std::io::Result<&'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Ok("SIGINT"),
                _ = self.term.recv() => Ok("SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
        }
    }
}
