//! `protoc`, as far as prost-build uses it, in pure Rust (the `protox` compiler).
//!
//! prost-build runs `protoc --include_imports [--include_source_info] -o FILE -I DIR ... FILES`
//! and reads the FileDescriptorSet written to FILE. This binary accepts protoc's spellings of
//! those flags (`-o F`, `-oF`, `--descriptor_set_out=F`, `-I D`, `-ID`, `--proto_path=D`),
//! `--version`, and the harmless `--experimental_allow_proto3_optional`; anything else is
//! refused rather than silently ignored, so a new prost-build flag shows up as a clear error.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Default)]
struct Args {
    includes: Vec<PathBuf>,
    output: Option<PathBuf>,
    include_imports: bool,
    include_source_info: bool,
    files: Vec<PathBuf>,
    version: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--version" => out.version = true,
            "--include_imports" => out.include_imports = true,
            "--include_source_info" => out.include_source_info = true,
            "--experimental_allow_proto3_optional" => {}
            "-o" | "--descriptor_set_out" => out.output = Some(value(&a)?.into()),
            "-I" | "--proto_path" => out.includes.push(value(&a)?.into()),
            _ => {
                if let Some(v) = a.strip_prefix("--descriptor_set_out=") {
                    out.output = Some(v.into());
                } else if let Some(v) = a.strip_prefix("--proto_path=") {
                    out.includes.push(v.into());
                } else if let Some(v) = a.strip_prefix("-o") {
                    out.output = Some(v.into());
                } else if let Some(v) = a.strip_prefix("-I") {
                    out.includes.push(v.into());
                } else if a.starts_with('-') {
                    return Err(format!("unsupported option {a:?} (this is a protox-based shim)"));
                } else {
                    out.files.push(a.into());
                }
            }
        }
    }
    Ok(out)
}

fn run() -> Result<(), String> {
    let args = parse(std::env::args().skip(1))?;
    if args.version {
        // prost-build does not parse this; protoc prints this form.
        println!("libprotoc 3.21.12 (protoc-shim {}, protox)", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    if args.files.is_empty() {
        return Err("missing input file".into());
    }
    let output = args.output.ok_or("missing output: -o FILE")?;
    let includes = if args.includes.is_empty() { vec![PathBuf::from(".")] } else { args.includes };
    let mut compiler = protox::Compiler::new(includes).map_err(|e| format!("{e:?}"))?;
    compiler.include_imports(args.include_imports);
    compiler.include_source_info(args.include_source_info);
    for f in &args.files {
        compiler.open_file(f).map_err(|e| format!("{}: {e:?}", f.display()))?;
    }
    std::fs::write(&output, compiler.encode_file_descriptor_set())
        .map_err(|e| format!("write {}: {e}", output.display()))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("protoc (protox shim): {e}");
            ExitCode::FAILURE
        }
    }
}
