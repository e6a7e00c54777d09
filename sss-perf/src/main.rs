//! `sss-perf`: measures SSS (and, for comparison, quinn) on real sockets. Being built.

fn main() {
    eprintln!("sss-perf: not built yet");
    std::process::exit(2);
}
