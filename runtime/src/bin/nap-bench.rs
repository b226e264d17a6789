//! `nap-bench`: the `nap bench` command without the pruner, small enough to copy to a device
//! next to its models (`cargo build -p nap-runtime --features cli --release --bin nap-bench`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "nap-bench", version)]
struct Cli {
    #[command(flatten)]
    args: nap_runtime::bench::cli::BenchArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = nap_runtime::bench::cli::run(&cli.args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
