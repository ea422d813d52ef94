//! The `ironcd` binary. The etcd v3 gRPC server is not built yet (see the
//! server issue); until then the binary says so and exits non-zero.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("ironcd Version: {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    eprintln!("ironcd: the server is not built yet; only the storage engine exists so far (see README.md)");
    std::process::exit(2);
}
