//! Deterministic layer content: a seeded PRNG, ustar archives and gzip.
//!
//! A layer is a real `tar.gz` (so podman, containerd and dockerd can unpack it) holding
//! `data/`, `data/<name>.txt` and `data/<name>.bin` with `size` pseudo-random bytes. The same
//! (seed, size) always gives the same bytes; different seeds give different bytes. Layers of
//! up to 16 MiB are gzip level 1, bigger ones level 0 (stored blocks: random data does not
//! compress anyway), which keeps a 64 MiB layer at a fraction of a second in a debug build.

use std::io::Write;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// "sha256:<hex>" of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Fill `buf` with pseudo-random bytes that depend only on `seed`: the ChaCha20 keystream
/// under key sha256(seed) (computed by ring, so it is fast even in a debug build).
pub fn fill_random(seed: &str, buf: &mut [u8]) {
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    buf.fill(0);
    let key =
        UnboundKey::new(&CHACHA20_POLY1305, &Sha256::digest(seed.as_bytes())).expect("chacha key");
    let key = LessSafeKey::new(key);
    // One key per seed and a fixed nonce: fine here, this is a PRNG, not encryption.
    for (i, chunk) in buf.chunks_mut(1 << 30).enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let _tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), chunk)
            .expect("chacha keystream");
    }
}

/// `len` pseudo-random bytes from `seed` (see [`fill_random`]).
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_random(seed, &mut v);
    v
}

/// A built layer: the gzip'd tar and the digest of the uncompressed tar.
pub struct BuiltLayer {
    /// The tar.gz bytes (the blob).
    pub gz: Bytes,
    /// "sha256:<hex>" of `gz`.
    pub digest: String,
    /// "sha256:<hex>" of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

/// Build the layer for (`seed`, `size`).
pub fn build_layer(seed: &str, size: usize) -> BuiltLayer {
    let name: String = seed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    let txt = format!("synthetic layer seed={seed} size={size}\n");
    let mut tar = Vec::with_capacity(size + 4096);
    tar_entry(&mut tar, "data/", 0, b'5', 0o755);
    tar_entry(
        &mut tar,
        &format!("data/{name}.txt"),
        txt.len(),
        b'0',
        0o644,
    );
    tar.extend_from_slice(txt.as_bytes());
    pad512(&mut tar);
    tar_entry(&mut tar, &format!("data/{name}.bin"), size, b'0', 0o644);
    let start = tar.len();
    tar.resize(start + size, 0);
    fill_random(seed, &mut tar[start..]);
    pad512(&mut tar);
    tar.resize(tar.len() + 1024, 0); // end-of-archive marker
    let diff_id = sha256_digest(&tar);

    let gz = if size <= 16 << 20 {
        let out = Vec::with_capacity(tar.len() + tar.len() / 1000 + 1024);
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .write(out, flate2::Compression::new(1));
        enc.write_all(&tar).expect("gzip in memory");
        enc.finish().expect("gzip finish")
    } else {
        gzip_stored(&tar)
    };
    BuiltLayer {
        digest: sha256_digest(&gz),
        gz: Bytes::from(gz),
        diff_id,
    }
}

/// gzip with deflate "stored" blocks (level 0), written directly: a plain copy plus a CRC.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]); // no name, mtime 0, OS unknown
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let len = c.len() as u16;
        out.push(u8::from(chunks.peek().is_none())); // BFINAL on the last block, BTYPE 00
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn pad512(tar: &mut Vec<u8>) {
    let rem = tar.len() % 512;
    if rem != 0 {
        tar.resize(tar.len() + 512 - rem, 0);
    }
}

/// Append a ustar header (owner root, mtime 0).
fn tar_entry(tar: &mut Vec<u8>, path: &str, size: usize, typeflag: u8, mode: u32) {
    assert!(path.len() < 100, "tar path too long: {path}");
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h[100..108], mode as u64); // mode
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size as u64); // size
    octal(&mut h[136..148], 0); // mtime
    h[148..156].fill(b' '); // checksum placeholder
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let cks = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(cks.as_bytes());
    tar.extend_from_slice(&h);
}

/// Zero-padded octal filling the field, NUL-terminated.
fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    assert!(s.len() == w, "value {v} does not fit a {w}-digit tar field");
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}
