//! Generates the rewind.v1 types and gRPC services from proto/rewind/v1 with
//! a pure-Rust protobuf compiler, so a fresh machine needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["rewind/v1/agent.proto", "rewind/v1/operator.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
