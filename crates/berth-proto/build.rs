use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["types", "access", "api", "agent", "raft"]
        .map(|name| format!("../../proto/berth/v1/{name}.proto"));
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("berth_descriptor.bin"))
        .btree_map(".")
        // Smaller first buffers for every call and stream (src/codec.rs).
        .codec_path("crate::SmallBuffers")
        // Messages that carry secret values in clear print their keys only (lib.rs).
        .skip_debug([
            ".berth.v1.ContainerSecrets",
            ".berth.v1.SecretDirectory",
            ".berth.v1.PutSecretRequest",
            ".berth.v1.Keyring",
        ])
        .compile_protos(&protos, &["../../proto".to_owned()])?;
    Ok(())
}
