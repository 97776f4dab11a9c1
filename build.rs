//! Build script:
//! - decompresses the embedded CLIP BPE vocabulary (`weights/bpe_simple_vocab_16e6.txt.gz`) into
//!   `OUT_DIR`, where `src/clip/tokenizer.rs` picks it up with `include_str!`, so the tokenizer needs no
//!   file and no network at run time;
//! - with the `cuda` feature, compiles `src/kernels/cuda/kernels.cu` to PTX with `nvcc` (found through
//!   `NVCC`, `CUDA_ROOT`/`CUDA_PATH`/`CUDA_HOME` or `PATH`) for compute capability `CUDA_COMPUTE_CAP`
//!   (default 80: Ampere and newer; the driver compiles the PTX for the card at load time).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const VOCAB_GZ: &str = "weights/bpe_simple_vocab_16e6.txt.gz";
const VOCAB_TXT: &str = "bpe_simple_vocab_16e6.txt";
const CUDA_KERNELS: &str = "src/kernels/cuda/kernels.cu";
const CUDA_PTX: &str = "actionclip_kernels.ptx";

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
        std::fs::write(&out_path, text).map_err(|e| format!("cannot write {}: {e}", out_path.display()))?;
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_cuda_kernels(&manifest_dir, &out_dir)?;
    }
    Ok(())
}

/// `nvcc --ptx` of the fused kernels into `OUT_DIR`.
fn compile_cuda_kernels(manifest_dir: &Path, out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for var in ["NVCC", "CUDA_ROOT", "CUDA_PATH", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={CUDA_KERNELS}");
    let nvcc = std::env::var_os("NVCC").map(PathBuf::from).unwrap_or_else(|| {
        ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"]
            .iter()
            .filter_map(std::env::var_os)
            .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("nvcc"))
    });
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: u32 =
        cap.trim().parse().map_err(|_| format!("CUDA_COMPUTE_CAP must be a number like 80 or 90, got {cap:?}"))?;
    if cap < 80 {
        return Err(format!("the fused kernels need compute capability 8.0 or newer (bf16 mma.sync, cp.async); CUDA_COMPUTE_CAP is {cap}").into());
    }
    let out = out_dir.join(CUDA_PTX);
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg(manifest_dir.join(CUDA_KERNELS))
        .status()
        .map_err(|e| format!("cannot run {} (set NVCC or CUDA_ROOT, or put nvcc on PATH): {e}", nvcc.display()))?;
    if !status.success() {
        return Err(format!("{} failed on {CUDA_KERNELS}: {status}", nvcc.display()).into());
    }
    Ok(())
}
