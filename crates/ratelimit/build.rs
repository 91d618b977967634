//! Generates the RLS v3 server from `proto/rls.proto` (needs `protoc`: `make protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/rls.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_protos(&["proto/rls.proto"], &["proto"])?;
    Ok(())
}
