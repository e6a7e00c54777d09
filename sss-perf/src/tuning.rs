//! Transport settings shared by both stacks and chosen for a fair comparison
//! (perf-anchors §7.2: same AEAD, same MTU, same windows, same socket buffers).

use std::fmt;

/// The AEAD protecting application data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CipherChoice {
    /// AES-256-GCM if the CPU has AES and carry-less multiply instructions, else ChaCha20.
    Auto,
    /// AES-256-GCM (TLS13_AES_256_GCM_SHA384 for quinn).
    Aes256,
    /// ChaCha20-Poly1305 (TLS13_CHACHA20_POLY1305_SHA256 for quinn).
    Chacha20,
}

/// A resolved AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// AES-256-GCM.
    Aes256,
    /// ChaCha20-Poly1305.
    Chacha20,
}

impl CipherChoice {
    /// Resolves `Auto` by asking the CPU.
    pub fn resolve(self) -> Cipher {
        match self {
            Self::Aes256 => Cipher::Aes256,
            Self::Chacha20 => Cipher::Chacha20,
            Self::Auto if hardware_aes() => Cipher::Aes256,
            Self::Auto => Cipher::Chacha20,
        }
    }
}

fn hardware_aes() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Aes256 => "aes256",
            Self::Chacha20 => "chacha20",
        })
    }
}

/// Transport knobs, identical flags for `server` and `client` and for both stacks.
#[derive(Debug, Clone, clap::Args)]
pub struct Tuning {
    /// AEAD for application data.
    #[arg(long, value_enum, default_value_t = CipherChoice::Auto)]
    pub cipher: CipherChoice,
    /// Per-stream receive window in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub stream_window: u64,
    /// Connection receive (and send) window in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub conn_window: u64,
    /// Concurrent bidirectional streams the peer may open.
    #[arg(long, default_value_t = 1000)]
    pub max_streams: u32,
    /// SO_RCVBUF and SO_SNDBUF requested in bytes. The kernel caps them at rmem_max/wmem_max
    /// (4 MiB here) unless the process has CAP_NET_ADMIN: then both stacks ask again with
    /// SO_RCVBUFFORCE/SO_SNDBUFFORCE. 16 MiB holds a full congestion window's burst on
    /// loopback: with 4 MiB the receiver dropped whole 45-datagram GSO batches.
    #[arg(long, default_value_t = 16 << 20)]
    pub socket_buffer: usize,
    /// UDP payload size used before path MTU discovery.
    #[arg(long, default_value_t = 1200)]
    pub initial_mtu: u16,
    /// Largest UDP payload sent or accepted (the MTU discovery upper bound).
    #[arg(long, default_value_t = 1452)]
    pub max_udp_payload: u16,
    /// SSS client: send the connect probe after the handshake rather than inside it as
    /// early data (to measure what early data gains). quinn ignores it.
    #[arg(long)]
    pub no_early_data: bool,
    /// SSS: standard slow start instead of CUBIC's HyStart++ (to measure what it changes).
    /// quinn ignores it.
    #[arg(long)]
    pub no_hystart: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            cipher: CipherChoice::Auto,
            stream_window: 16 << 20,
            conn_window: 64 << 20,
            max_streams: 1000,
            socket_buffer: 16 << 20,
            initial_mtu: 1200,
            max_udp_payload: 1452,
            no_early_data: false,
            no_hystart: false,
        }
    }
}

impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cipher={} stream_window={} conn_window={} max_streams={} socket_buffer={} \
             initial_mtu={} max_udp_payload={} early_data={} hystart={}",
            self.cipher.resolve(),
            self.stream_window,
            self.conn_window,
            self.max_streams,
            self.socket_buffer,
            self.initial_mtu,
            self.max_udp_payload,
            !self.no_early_data,
            !self.no_hystart
        )
    }
}
