//! Write every target's seeds into `corpus/<target>/seed-<n>` (run from `fuzz/`:
//! `cargo run --example seeds`), the inputs each corpus starts from.

fn main() -> std::io::Result<()> {
    for target in airlock_fuzz::TARGETS {
        let dir = std::path::Path::new("corpus").join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in airlock_fuzz::seeds_of(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
    }
    Ok(())
}
