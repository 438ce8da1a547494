//! mm-tui: the live dashboard (host vs engine). Not built yet; until it is,
//! this binary says so and points at what exists.

fn main() {
    eprintln!(
        "mm-tui: the dashboard is not implemented yet.\n\
         For the live host view run: sudo mm-probe run   (or: cargo xtask run)"
    );
    std::process::exit(2);
}
