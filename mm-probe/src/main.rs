//! `mm-probe`: see `mm-probe --help`.

fn main() {
    std::process::exit(mm_probe::cli::main());
}
