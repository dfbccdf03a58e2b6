//! Compares two GGUF files block by block: `compare_gguf OURS REFERENCE`.
use edgelm_gguf::GgufFile;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: compare_gguf OURS REFERENCE");
        std::process::exit(2);
    }
    let ours = GgufFile::open(&args[1])?;
    let reference = GgufFile::open(&args[2])?;
    let (mut n_exact, mut blocks, mut blocks_differ) = (0, 0, 0);
    let diffs = edgelm_quant::compare::compare_files(&ours, &reference);
    for d in &diffs {
        blocks += d.n_blocks;
        blocks_differ += d.n_blocks_differ;
        if d.is_exact() {
            n_exact += 1;
        } else {
            println!(
                "{}: ours {:?} reference {}: {} of {} blocks differ, max |diff| {}",
                d.name, d.ours, d.reference, d.n_blocks_differ, d.n_blocks, d.max_abs_diff
            );
        }
    }
    println!(
        "{n_exact} of {} tensors identical; {blocks_differ} of {blocks} blocks differ",
        diffs.len()
    );
    Ok(())
}
