//! Generates the Rust types (prost) and gRPC stubs (tonic) for the .proto files under
//! `proto/`, with `protox` as the protobuf compiler: the build needs no `protoc` binary.
//! Also writes the encoded `FileDescriptorSet` for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto",
    "etcd/api/etcdserverpb/rpc.proto",
    "etcd/server/v3lockpb/v3lock.proto",
    "etcd/server/v3electionpb/v3election.proto",
    "quorumkv/internal.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let fds = protox::compile(&files, [&root])?;
    fs::write(out_dir.join("file_descriptor_set.bin"), fds.encode_to_vec())?;

    // The stubs compile only with the `grpc` feature, so that crates needing only the
    // message types do not pull in tonic.
    let grpc_only = r#"#[cfg(feature = "grpc")]"#;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .generate_default_stubs(true)
        .client_mod_attribute(".", grpc_only)
        .server_mod_attribute(".", grpc_only)
        .bytes(".")
        .out_dir(&out_dir)
        .compile_fds(fds)?;
    Ok(())
}
