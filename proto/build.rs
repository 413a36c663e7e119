//! Generates the Rust code of `proto/quartermaster/v1/*.proto` with protox (a pure-Rust
//! protobuf compiler), so no system `protoc` is needed, and writes the encoded descriptor set
//! that server reflection serves.

const FILES: [&str; 5] = [
    "proto/quartermaster/v1/types.proto",
    "proto/quartermaster/v1/jobs.proto",
    "proto/quartermaster/v1/admin.proto",
    "proto/quartermaster/v1/agent.proto",
    "proto/quartermaster/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(FILES, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("quartermaster_v1.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
