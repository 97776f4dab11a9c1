//! Build script: decompresses the embedded CLIP BPE vocabulary (`weights/bpe_simple_vocab_16e6.txt.gz`)
//! into `OUT_DIR`, where `src/clip/tokenizer.rs` picks it up with `include_str!`. The tokenizer then needs
//! no file and no network at run time.
use std::io::Read;
use std::path::PathBuf;

const VOCAB_GZ: &str = "weights/bpe_simple_vocab_16e6.txt.gz";
const VOCAB_TXT: &str = "bpe_simple_vocab_16e6.txt";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={VOCAB_GZ}");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let gz_path = manifest_dir.join(VOCAB_GZ);
    let gz = std::fs::read(&gz_path)
        .map_err(|e| format!("cannot read the tokenizer vocabulary {}: {e}", gz_path.display()))?;
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(gz.as_slice())
        .read_to_string(&mut text)
        .map_err(|e| format!("{} is not a gzip-compressed UTF-8 text: {e}", gz_path.display()))?;
    let out_path = out_dir.join(VOCAB_TXT);
    // Only rewrite when the content changed, so dependent crates are not rebuilt for nothing.
    if std::fs::read_to_string(&out_path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&out_path, text)
            .map_err(|e| format!("cannot write {}: {e}", out_path.display()))?;
    }
    Ok(())
}
