//! Generates the Rust code of `proto/quartermaster/v1/*.proto` with protox (a pure-Rust
//! protobuf compiler), so no system `protoc` is needed.

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
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
