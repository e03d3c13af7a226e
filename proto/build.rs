//! Compiles `gantry/admin/v1/admin.proto` with protox (no system `protoc`) and generates the
//! prost messages and the tonic client and server from the descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "gantry/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
