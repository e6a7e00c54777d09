//! The SSS rendezvous server (not built yet): it will resolve EIDs to addresses, coordinate
//! hole punching and relay when punching fails, over `sss-routing`.

fn main() {
    eprintln!("regserver: not implemented yet (see the roadmap in README.md)");
    std::process::exit(2);
}
