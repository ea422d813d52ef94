//! Generates the etcd v3 API (gRPC services and messages) from the vendored
//! proto files in `proto/`. Uses the system `protoc` when present, otherwise
//! the one shipped by the `protoc-bin-vendored` crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() && which_protoc().is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .build_transport(false)
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/rpc.proto",
                "proto/v3lock.proto",
                "proto/v3election.proto",
                "proto/ironcd_internal.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}

fn which_protoc() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("protoc"))
        .find(|p| p.is_file())
}
