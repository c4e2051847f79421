//! Generates the DMI v1beta1 messages and both services' clients and
//! servers from `proto/api.proto` into `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/api.proto"], &["proto"])?;
    Ok(())
}
