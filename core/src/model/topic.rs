//! Topic patterns: which routing keys a topic exchange's binding key matches.
//!
//! A routing key and a binding key are both split into words at `.`. In a binding key, a word that
//! is exactly `*` matches exactly one word, and a word that is exactly `#` matches zero or more
//! words. Every other word, including `a*`, `#b` and the empty word, matches itself byte for byte.
//!
//! Splitting: the empty key has no words; any other key with n dots has n + 1 words, some of which
//! may be empty (`a..b` is `a`, ``, `b`; `.` is two empty words). This is RabbitMQ's rule, so
//! clients moving over see the same matches: `#` matches the empty key, `*` does not, and `*`
//! matches an empty word (`*.b` matches `.b`).
//!
//! Not here: which queues a pattern leads to (see `exchange`), or matching many patterns at once
//! (see `topic_trie`, which is built from `Pattern::words` and splits keys with `key_words`).
//!
//! Invariants:
//! - A compiled `Pattern` never holds two `#` in a row, and within a run of wildcards every `*`
//!   comes before the `#` (`#.*.#` is kept as `*.#`). Both rewrites keep the meaning; they bound
//!   the matcher's backtracking and let a trailing `#` end the match at once.
//! - `Pattern::matches` allocates nothing, never recurses, and takes at most
//!   O(pattern words × key bytes) steps, whatever the pattern.
//! - A pattern without wildcards (`is_literal`) matches exactly one key: its own bytes.

/// A compiled topic binding key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The binding key as given, which literal words point into.
    source: Box<[u8]>,
    /// The words of the key after normalization (see the module invariants).
    tokens: Box<[Token]>,
}

impl Pattern {
    /// Compiles a binding key. Every byte string is a valid pattern.
    pub fn compile(binding_key: &[u8]) -> Pattern {
        let mut tokens = Vec::new();
        // A run of wildcards is buffered as a count of `*` plus "saw a `#`", then written out
        // stars first, so that `#.#` and `#.*` need no backtracking of their own.
        let mut run_stars = 0usize;
        let mut run_hash = false;
        let mut words = Words::start(binding_key);
        while let Some((word, start, next)) = words.next_word(binding_key) {
            match word {
                b"*" => run_stars += 1,
                b"#" => run_hash = true,
                _ => {
                    flush_wildcards(&mut tokens, &mut run_stars, &mut run_hash);
                    let end = start + word.len();
                    tokens.push(Token::Word { start: as_u32(start), end: as_u32(end) });
                }
            }
            words = next;
        }
        flush_wildcards(&mut tokens, &mut run_stars, &mut run_hash);
        for pair in tokens.windows(2) {
            assert!(!matches!(pair, [Token::Hash, Token::Hash]), "normalized pattern has `#.#`");
            assert!(!matches!(pair, [Token::Hash, Token::Star]), "normalized pattern has `#.*`");
        }
        Pattern { source: binding_key.into(), tokens: tokens.into_boxed_slice() }
    }

    /// The binding key this pattern was compiled from.
    pub fn source(&self) -> &[u8] {
        &self.source
    }

    /// True when the pattern has no `*` or `#` word, so it matches only a key equal to `source`
    /// and a hash lookup can stand in for `matches`.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|token| matches!(token, Token::Word { .. }))
    }

    /// The pattern's words after normalization, in order: what a `TopicTrie` is built from.
    pub fn words(&self) -> impl Iterator<Item = PatternWord<'_>> + '_ {
        self.tokens.iter().map(|token| match *token {
            Token::Word { start, end } => PatternWord::Literal(&self.source[start as usize..end as usize]),
            Token::Star => PatternWord::Star,
            Token::Hash => PatternWord::Hash,
        })
    }

    /// True when `routing_key` matches this pattern.
    pub fn matches(&self, routing_key: &[u8]) -> bool {
        let tokens = &self.tokens;
        let mut token_index = 0usize;
        let mut words = Words::start(routing_key);
        // The last `#` seen, as the token after it and the key position it has absorbed up to.
        // On a mismatch that `#` absorbs one more word and matching resumes after it. Returning
        // to the last `#` only is enough: a later `#` can absorb whatever an earlier one would.
        let mut resume: Option<(usize, Words)> = None;
        loop {
            let stepped = match tokens.get(token_index) {
                Some(Token::Hash) => {
                    if token_index + 1 == tokens.len() {
                        // A trailing `#` absorbs whatever is left.
                        return true;
                    }
                    resume = Some((token_index + 1, words));
                    token_index += 1;
                    continue;
                }
                Some(Token::Star) => words.next_word(routing_key).map(|(_, _, next)| next),
                Some(Token::Word { start, end }) => {
                    let expected = &self.source[*start as usize..*end as usize];
                    match words.next_word(routing_key) {
                        Some((word, _, next)) if word == expected => Some(next),
                        _ => None,
                    }
                }
                None if words.is_end(routing_key) => return true,
                None => None,
            };
            match stepped {
                Some(next) => {
                    words = next;
                    token_index += 1;
                }
                None => {
                    let Some((after_hash, absorbed)) = resume else {
                        return false;
                    };
                    let Some((_, _, next)) = absorbed.next_word(routing_key) else {
                        return false;
                    };
                    resume = Some((after_hash, next));
                    token_index = after_hash;
                    words = next;
                }
            }
        }
    }
}

/// One word of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternWord<'a> {
    /// Matches this exact word.
    Literal(&'a [u8]),
    /// `*`: exactly one word.
    Star,
    /// `#`: zero or more words. Never followed by `#` or `*` (see the module invariants).
    Hash,
}

/// The words of a routing key, as this module splits them: none for the empty key.
pub fn key_words(routing_key: &[u8]) -> KeyWords<'_> {
    KeyWords { key: routing_key, position: Words::start(routing_key) }
}

/// Iterator over the words of a routing key; see `key_words`.
#[derive(Debug, Clone)]
pub struct KeyWords<'a> {
    /// The key.
    key: &'a [u8],
    /// Where the next word starts.
    position: Words,
}

impl<'a> Iterator for KeyWords<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (word, _, next) = self.position.next_word(self.key)?;
        self.position = next;
        Some(word)
    }
}

/// True when `routing_key` matches `binding_key`; compiles the pattern on every call, so routing
/// code should keep a `Pattern` instead.
pub fn matches(binding_key: &[u8], routing_key: &[u8]) -> bool {
    Pattern::compile(binding_key).matches(routing_key)
}

/// One word of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A literal word: the byte range `start..end` of the pattern's source.
    Word {
        /// First byte of the word in the source.
        start: u32,
        /// One past the last byte of the word in the source.
        end: u32,
    },
    /// `*`: exactly one word.
    Star,
    /// `#`: zero or more words.
    Hash,
}

/// A position between words of a key: the next word starts at byte `next_start`, and
/// `next_start > key.len()` means there are no words left. Starting the empty key past its end is
/// what gives it zero words, while `a.` still has a second, empty, word starting at its end.
#[derive(Debug, Clone, Copy)]
struct Words {
    /// Byte offset where the next word starts.
    next_start: usize,
}

impl Words {
    /// Before the first word of `key`.
    fn start(key: &[u8]) -> Words {
        Words { next_start: usize::from(key.is_empty()) }
    }

    /// True when every word of `key` has been taken.
    fn is_end(self, key: &[u8]) -> bool {
        self.next_start > key.len()
    }

    /// The next word, its start offset, and the position after it.
    fn next_word(self, key: &[u8]) -> Option<(&[u8], usize, Words)> {
        if self.is_end(key) {
            return None;
        }
        let start = self.next_start;
        let end = key[start..].iter().position(|&byte| byte == b'.').map_or(key.len(), |i| start + i);
        Some((&key[start..end], start, Words { next_start: end + 1 }))
    }
}

/// Writes a buffered run of wildcards: its stars, then one `#` if the run had any.
fn flush_wildcards(tokens: &mut Vec<Token>, run_stars: &mut usize, run_hash: &mut bool) {
    tokens.extend(std::iter::repeat_n(Token::Star, *run_stars));
    if *run_hash {
        tokens.push(Token::Hash);
    }
    *run_stars = 0;
    *run_hash = false;
}

/// A byte offset of a pattern as `u32`.
///
/// # Panics
///
/// If the pattern is 4 GiB or longer, which no frame can carry (`limits::FRAME_BYTES_MAX`).
fn as_u32(offset: usize) -> u32 {
    u32::try_from(offset).expect("topic pattern longer than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: pin the matching rules on the cases that differ between implementations.
    // Method: a table of (pattern, key, expected), checked against the compiled matcher and
    // against a naive recursive reference that follows the definition word by word.
    #[test]
    fn topic_edge_cases_match_the_definition() {
        let table: &[(&str, &str, bool)] = &[
            // The empty key has no words.
            ("", "", true),
            ("#", "", true),
            ("#.#", "", true),
            ("*", "", false),
            ("", "a", false),
            // `#` alone matches everything, repeated or not.
            ("#", "a", true),
            ("#", "a.b.c", true),
            ("#.#", "a.b", true),
            ("#.#.#", "a", true),
            ("#", ".", true),
            // `*` matches exactly one word, possibly empty.
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("*.*", ".", true),
            ("*", ".", false),
            ("*.b", ".b", true),
            ("a.*", "a.", true),
            ("a.*", "a", false),
            // Empty words are literal words.
            ("a..b", "a..b", true),
            ("a..b", "a.b", false),
            ("a.", "a", false),
            ("a.", "a.", true),
            (".", ".", true),
            (".", "", false),
            // `#` in the middle matches zero or more words.
            ("a.#.b", "a.b", true),
            ("a.#.b", "a.x.b", true),
            ("a.#.b", "a.x.y.b", true),
            ("a.#.b", "a.b.b", true),
            ("a.#.b", "a.b.c", false),
            ("a.#.b", "a", false),
            ("a.#.b", "b", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("a.#", "ab", false),
            ("#.a", "a", true),
            ("#.a", "x.y.a", true),
            ("#.a", "a.x", false),
            // Mixed runs: `#.*` needs at least one word.
            ("#.*", "", false),
            ("#.*", "a", true),
            ("*.#", "a.b.c", true),
            ("#.*.#", "a", true),
            ("a.#.*.c", "a.c", false),
            ("a.#.*.c", "a.b.c", true),
            ("a.*.#.c", "a.b.x.y.c", true),
            // Backtracking over repeated words.
            ("#.a.b", "a.a.b", true),
            ("#.a.#.a", "a.x.a", true),
            ("#.a.#.a", "a", false),
            ("a.#.a.#.a", "a.a.a", true),
            ("a.#.a.#.a", "a.a", false),
            // Wildcards only as whole words.
            ("a*", "ab", false),
            ("a*", "a*", true),
            ("#b", "b", false),
            ("#b", "#b", true),
            ("*", "*", true),
            // Literal words compare bytes exactly.
            ("a.b", "a.b", true),
            ("a.b", "a.B", false),
            ("a.b", "a.b.c", false),
        ];
        for &(pattern, key, expected) in table {
            let compiled = Pattern::compile(pattern.as_bytes());
            assert_eq!(compiled.matches(key.as_bytes()), expected, "pattern {pattern:?} key {key:?}");
            assert_eq!(
                reference_matches(&split(pattern), &split(key)),
                expected,
                "reference: pattern {pattern:?} key {key:?}"
            );
        }
    }

    // Goal: literal patterns are exactly those that match only their own bytes, and the
    // normalization keeps the source.
    #[test]
    fn literal_patterns_are_those_without_wildcards() {
        // Wildcards only count as whole words.
        assert!(Pattern::compile(b"a.b").is_literal());
        assert!(Pattern::compile(b"").is_literal());
        assert!(Pattern::compile(b"a*.#b").is_literal());
        assert!(!Pattern::compile(b"a.*").is_literal());
        assert!(!Pattern::compile(b"#").is_literal());
        // The source survives normalization.
        assert_eq!(Pattern::compile(b"#.#.*").source(), b"#.#.*");
    }

    // Goal: the matcher agrees with the definition on many random patterns and keys.
    // Method: draw words from a tiny alphabet (so matches are common) with a seeded xorshift,
    // compare the compiled matcher with the recursive reference.
    #[test]
    fn random_patterns_agree_with_reference() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pattern_words = ["a", "b", "", "*", "#"];
        let key_words = ["a", "b", ""];
        for _ in 0..20_000 {
            let pattern_len = (next() % 6) as usize;
            let key_len = (next() % 7) as usize;
            let pattern: Vec<&str> = (0..pattern_len).map(|_| pattern_words[(next() % 5) as usize]).collect();
            let key: Vec<&str> = (0..key_len).map(|_| key_words[(next() % 3) as usize]).collect();
            let pattern = pattern.join(".");
            let key = key.join(".");
            let expected = reference_matches(&split(&pattern), &split(&key));
            assert_eq!(
                Pattern::compile(pattern.as_bytes()).matches(key.as_bytes()),
                expected,
                "pattern {pattern:?} key {key:?}"
            );
        }
    }

    // Goal: `key_words` splits as the module doc says, and `words` shows the normalized pattern.
    #[test]
    fn key_words_and_pattern_words_follow_the_splitting_rule() {
        fn split_bytes(key: &str) -> Vec<&[u8]> {
            key_words(key.as_bytes()).collect()
        }
        assert_eq!(split_bytes(""), Vec::<&[u8]>::new());
        assert_eq!(split_bytes("."), [b"".as_slice(), b""]);
        assert_eq!(split_bytes("a..b"), [b"a".as_slice(), b"", b"b"]);
        assert_eq!(split_bytes("a."), [b"a".as_slice(), b""]);
        let pattern = Pattern::compile(b"a.#.*.#.b");
        let words: Vec<PatternWord<'_>> = pattern.words().collect();
        assert_eq!(
            words,
            [PatternWord::Literal(b"a"), PatternWord::Star, PatternWord::Hash, PatternWord::Literal(b"b")]
        );
    }

    // Goal: a pattern full of `#` against a long key stays fast (no exponential backtracking).
    #[test]
    fn many_hashes_against_a_long_key_finish_quickly() {
        let pattern = Pattern::compile(b"#.a.#.a.#.a.#.a.#.a.#.b");
        let key = vec!["a"; 2000].join(".").into_bytes();
        // Only `a` words: the final literal `b` never matches.
        assert!(!pattern.matches(&key));
    }

    /// Splits a key the way the module doc says: the empty key has no words.
    fn split(key: &str) -> Vec<&str> {
        if key.is_empty() {
            Vec::new()
        } else {
            key.split('.').collect()
        }
    }

    /// The definition, word by word, recursively; exponential but obviously right.
    fn reference_matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|taken| reference_matches(rest, &key[taken..])),
            Some((&"*", rest)) => !key.is_empty() && reference_matches(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && reference_matches(rest, &key[1..]),
        }
    }
}
