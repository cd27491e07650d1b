//! Helpers shared by unit tests and the end-to-end tests in `tests/`.

/// Skips a test that needs something this machine lacks (root, a kernel
/// feature, a server binary). Loud always; fatal when `CI=true`, where a
/// silent skip would let a broken kernel path pass.
#[track_caller]
pub fn skip(why: &str) {
    let at = std::panic::Location::caller();
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("test at {at} cannot run here and CI=true forbids skipping: {why}");
    }
    eprintln!("\n*** SKIPPED test at {at}: {why} ***\n");
}

/// xorshift64*: a deterministic pseudo-random sequence for property-style
/// tests, so every run walks the same inputs and needs no extra crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}
