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
