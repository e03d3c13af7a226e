//! The property every stream translator must have: the output does not depend on how the
//! provider's stream was cut into chunks.

use crate::translate::StreamTranslator;

fn run(translator: &mut dyn StreamTranslator, pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(translator.push(piece));
    }
    out.extend(translator.finish());
    out
}

/// A small deterministic generator (xorshift64), so that failures reproduce.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Feeds `stream` whole, then split in two at every byte position, then cut at many random
/// positions at once (and byte by byte), asserting the output is always the same as the whole.
/// Returns the output.
pub(super) fn assert_split_invariant<T: StreamTranslator>(
    make: impl Fn() -> T,
    stream: &[u8],
) -> Vec<u8> {
    let whole = run(&mut make(), &[stream]);
    assert!(!whole.is_empty(), "the stream translates to something");
    for at in 0..=stream.len() {
        let (head, tail) = stream.split_at(at);
        let out = run(&mut make(), &[head, tail]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&whole),
            "split at byte {at}"
        );
    }
    let mut random = Xorshift(0x9E37_79B9_7F4A_7C15);
    for round in 0..64 {
        let cuts = 2 + (random.next() % 40) as usize;
        let mut positions: Vec<usize> = (0..cuts)
            .map(|_| (random.next() % (stream.len() as u64 + 1)) as usize)
            .collect();
        positions.sort_unstable();
        let mut pieces = Vec::with_capacity(positions.len() + 1);
        let mut start = 0;
        for position in positions {
            pieces.push(&stream[start..position]);
            start = position;
        }
        pieces.push(&stream[start..]);
        let out = run(&mut make(), &pieces);
        assert_eq!(out, whole, "random round {round}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(&mut make(), &bytes), whole, "byte by byte");
    whole
}
