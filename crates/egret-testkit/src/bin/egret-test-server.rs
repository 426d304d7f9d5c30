//! egret-test-server: see `egret_testkit::server` for routes and flags.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = egret_testkit::server::run_from_args(&args) {
        eprintln!("egret-test-server: {e:#}");
        std::process::exit(2);
    }
}
