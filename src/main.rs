//! The `rackhand` binary: parses the command line and hands over to `rackhand::cli`.

fn main() {
    std::process::exit(rackhand::cli::main());
}
