//! Compiles `proto/gantry.proto` with the vendored `protoc`, so cargo alone builds Gantry.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/gantry.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/gantry.proto");
    Ok(())
}
