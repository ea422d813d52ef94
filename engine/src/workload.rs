//! A deterministic key/value workload shared by the space test
//! (`engine/tests/mvcc_space.rs`) and the space benchmark
//! (`benches/benches/space.rs`), so both measure the same data.

/// Size of [`key`]'s keys.
pub const KEY_LEN: usize = 64;
/// Size of [`value`]'s values.
pub const VALUE_LEN: usize = 256;

/// SplitMix64: a well-mixed 64-bit hash of `x`.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Key `i`: [`KEY_LEN`] bytes shaped like a Kubernetes registry key;
/// consecutive `i` land at random places in key order.
pub fn key(i: u64) -> Vec<u8> {
    let mut k = format!("/registry/space/{:016x}/", splitmix64(i)).into_bytes();
    k.resize(KEY_LEN, b'k');
    k
}

/// The value of key `i` in overwrite round `round`: [`VALUE_LEN`] bytes,
/// different in every round.
pub fn value(round: u64, i: u64) -> Vec<u8> {
    let seed = splitmix64(i ^ (round << 40)).to_le_bytes();
    (0..VALUE_LEN).map(|j| seed[j % 8] ^ j as u8).collect()
}
