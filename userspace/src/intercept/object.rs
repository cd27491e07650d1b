//! The kernel object, built by `build.rs` and embedded in the binary.

/// Aligned so aya can parse the ELF in place.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/blastgate-ebpf.o"
)));

/// Empty when the binary was built with `BLASTGATE_SKIP_EBPF`.
pub static BYTES: &[u8] = &OBJECT.0;
