//! haproxy's word fingerprints (src/tools.c: `update_word_fingerprint`,
//! `word_fingerprint_distance`), with which its CLI suggests commands close to an unknown one.
//! Ported byte for byte so that hapmaster's `Unknown command` answers list the same commands.

/// A fingerprint: `[0..32]` marks the letter classes seen, `[32 * from + to]` counts each pair of
/// consecutive classes (class 28 also stands for the start and the end of a word).
pub struct Fingerprint([u8; 1024]);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint([0; 1024])
    }
}

impl Fingerprint {
    /// Adds `word`'s classes and transitions (haproxy's `update_word_fingerprint`). The counts
    /// are bytes that wrap, as haproxy's `uint8_t` do.
    pub fn add(&mut self, word: &[u8]) {
        let mut from = 28;
        for &b in word {
            let to = match b.to_ascii_lowercase() {
                c @ b'a'..=b'z' => usize::from(c - b'a' + 1),
                b'0'..=b'9' => 27,
                _ => 28,
            };
            self.0[to] = 1;
            self.0[32 * from + to] = self.0[32 * from + to].wrapping_add(1);
            from = to;
        }
        self.0[32 * from + 28] = self.0[32 * from + 28].wrapping_add(1);
    }

    /// The sum of the differences, cell by cell (haproxy's `word_fingerprint_distance`).
    pub fn distance(&self, other: &Fingerprint) -> u32 {
        self.0
            .iter()
            .zip(other.0.iter())
            .map(|(&a, &b)| u32::from(a.abs_diff(b)))
            .sum()
    }
}

/// The fingerprint of some words together.
pub fn fingerprint<'a>(words: impl IntoIterator<Item = &'a str>) -> Fingerprint {
    let mut fp = Fingerprint::default();
    for w in words {
        fp.add(w.as_bytes());
    }
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_words_are_close() {
        assert_eq!(
            fingerprint(["reload"]).distance(&fingerprint(["reload"])),
            0
        );
        // Case does not count, digits are one class.
        assert_eq!(
            fingerprint(["ReLoad"]).distance(&fingerprint(["reload"])),
            0
        );
        assert_eq!(fingerprint(["a1"]).distance(&fingerprint(["a9"])), 0);
        let near = fingerprint(["relaod"]).distance(&fingerprint(["reload"]));
        let far = fingerprint(["relaod"]).distance(&fingerprint(["quit"]));
        assert!(near < far, "{near} {far}");
    }

    #[test]
    fn by_hand() {
        // "ab": marks a, b; start->a, a->b, b->end. "b": marks b; start->b, b->end.
        // Differences: mark a (1), start->a (1), a->b (1), start->b (1).
        assert_eq!(fingerprint(["ab"]).distance(&fingerprint(["b"])), 4);
        // Counts wrap at 256 as haproxy's bytes do.
        let long = "a".repeat(257);
        let fp = fingerprint([long.as_str()]);
        assert_eq!(fp.0[32 + 1], 0);
    }
}
