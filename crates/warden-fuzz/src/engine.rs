//! The mutator, the outcome feedback, and the loop that drives a target.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::targets::Target;

/// Bytes that often matter to parsers.
const INTERESTING: &[u8] = b"\0\x7f\x80\xff\"'{}[]:,\\\n\r\t =#%/.-_0019aAzZ";

/// The longest input the mutator makes.
pub const MAX_LEN: usize = 96 * 1024;

/// How many inputs the in-memory corpus keeps at most (seeds included).
const CORPUS_CAP: usize = 8_192;

/// A seeded mutator over a corpus, with outcome feedback.
pub struct Fuzzer {
    rng: StdRng,
    corpus: Vec<Vec<u8>>,
    dictionary: Vec<Vec<u8>>,
    seen: HashSet<String>,
}

impl Fuzzer {
    /// A fuzzer seeded with `seed`, starting from `corpus` (at least one input), mutating with
    /// `dictionary` words too.
    pub fn new(seed: u64, corpus: Vec<Vec<u8>>, dictionary: &[&[u8]]) -> Self {
        let corpus = if corpus.is_empty() {
            vec![Vec::new()]
        } else {
            corpus
        };
        Self {
            rng: StdRng::seed_from_u64(seed),
            corpus,
            dictionary: dictionary.iter().map(|w| w.to_vec()).collect(),
            seen: HashSet::new(),
        }
    }

    /// How many inputs the corpus holds now.
    pub fn corpus_len(&self) -> usize {
        self.corpus.len()
    }

    /// How many distinct outcomes were seen.
    pub fn outcomes(&self) -> usize {
        self.seen.len()
    }

    /// The next input: a corpus entry (sometimes unchanged), mutated once (half the time) or
    /// two to eight times.
    pub fn next_input(&mut self) -> Vec<u8> {
        let mut input = self.corpus[self.rng.random_range(0..self.corpus.len())].clone();
        if self.rng.random_bool(0.02) {
            return input;
        }
        // Often one change only: inputs that stay close to valid reach past the decoders.
        let rounds = if self.rng.random_bool(0.5) {
            1
        } else {
            1 << self.rng.random_range(1..4)
        };
        for _ in 0..rounds {
            self.mutate(&mut input);
        }
        input.truncate(MAX_LEN);
        input
    }

    /// Records the outcome of `input`; a new one keeps the input in the corpus. Returns
    /// whether it was new.
    pub fn observe(&mut self, input: &[u8], outcome: &str) -> bool {
        if self.seen.insert(outcome.to_owned()) {
            if self.corpus.len() < CORPUS_CAP {
                self.corpus.push(input.to_vec());
            }
            return true;
        }
        false
    }

    fn mutate(&mut self, input: &mut Vec<u8>) {
        let len = input.len();
        let at = |rng: &mut StdRng| rng.random_range(0..=len);
        match self.rng.random_range(0..11) {
            0 if len > 0 => {
                let i = self.rng.random_range(0..len);
                input[i] ^= 1 << self.rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = self.rng.random_range(0..len);
                input[i] = INTERESTING[self.rng.random_range(0..INTERESTING.len())];
            }
            2 | 3 if !self.dictionary.is_empty() => {
                let word = self.dictionary[self.rng.random_range(0..self.dictionary.len())].clone();
                let i = at(&mut self.rng);
                input.splice(i..i, word);
            }
            4 if len > 0 => {
                let start = self.rng.random_range(0..len);
                let end = (start + self.rng.random_range(1..=16)).min(len);
                input.drain(start..end);
            }
            5 if len > 0 => {
                let start = self.rng.random_range(0..len);
                let end = (start + self.rng.random_range(1..=32)).min(len);
                let piece = input[start..end].to_vec();
                let i = at(&mut self.rng);
                input.splice(i..i, piece);
            }
            6 => {
                // Splice: this input's head, another's tail.
                let other = &self.corpus[self.rng.random_range(0..self.corpus.len())];
                let cut = self.rng.random_range(0..=len);
                let from = self.rng.random_range(0..=other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 => {
                let n = self.rng.random_range(1..=8);
                let i = at(&mut self.rng);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                input.splice(i..i, bytes);
            }
            8 if len > 0 && !self.dictionary.is_empty() => {
                let word = self.dictionary[self.rng.random_range(0..self.dictionary.len())].clone();
                let start = self.rng.random_range(0..len);
                let end = (start + self.rng.random_range(1..=8)).min(len);
                input.splice(start..end, word);
            }
            9 if len > 0 => input.truncate(self.rng.random_range(0..len)),
            10 if len > 0 && self.rng.random_bool(0.1) => {
                // A long input: one piece many times.
                let start = self.rng.random_range(0..len);
                let end = (start + self.rng.random_range(1..=8)).min(len);
                let piece = input[start..end].to_vec();
                let times = self.rng.random_range(64..8_192);
                let i = at(&mut self.rng);
                let long: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * times)
                    .collect();
                input.splice(i..i, long);
            }
            _ => {
                let i = at(&mut self.rng);
                input.insert(i, self.rng.random());
            }
        }
    }
}

/// Every file of `dir`, sorted by name: a target's seed corpus.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(std::fs::read).collect()
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs tried.
    pub inputs: u64,
    /// Inputs the target accepted.
    pub accepted: u64,
    /// Inputs the target refused, each with a clear error.
    pub refused: u64,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    /// The corpus's size at the end (seeds and inputs kept for a new outcome).
    pub corpus: usize,
    /// How long it took.
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{:<13} {:>9} inputs  {:>9} accepted  {:>9} refused  {:>5} outcomes  corpus {:>5}  {:>7.1} s  {:>8.0}/s  0 violations",
            self.target,
            self.inputs,
            self.accepted,
            self.refused,
            self.outcomes,
            self.corpus,
            self.elapsed.as_secs_f64(),
            rate
        )
    }
}

/// A violation: the input, and the rule it broke.
#[derive(Debug)]
pub struct Violation {
    /// The target.
    pub target: &'static str,
    /// The input that broke it.
    pub input: Vec<u8>,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}\ninput ({} bytes): {:?}",
            self.target,
            self.what,
            self.input.len(),
            String::from_utf8_lossy(&self.input[..self.input.len().min(2_000)])
        )
    }
}

/// Runs `inputs` inputs through `target`, seeded with `seed`, from its corpus in `corpus`.
pub async fn run(
    target: &mut dyn Target,
    corpus: &Path,
    seed: u64,
    inputs: u64,
) -> Result<Report, Violation> {
    let seeds = load_corpus(&corpus.join(target.name())).map_err(|e| Violation {
        target: target.name(),
        input: Vec::new(),
        what: format!("cannot read the corpus: {e}"),
    })?;
    let mut fuzzer = Fuzzer::new(seed, seeds.clone(), target.dictionary());
    let started = Instant::now();
    let mut report = Report {
        target: target.name(),
        ..Report::default()
    };
    // The seeds first, as they are; then mutations.
    let mut seeds = seeds.into_iter();
    for _ in 0..inputs {
        let input = seeds.next().unwrap_or_else(|| fuzzer.next_input());
        match target.run(&input).await {
            Ok(outcome) => {
                if outcome.accepted {
                    report.accepted += 1;
                } else {
                    report.refused += 1;
                }
                fuzzer.observe(&input, &outcome.kind);
            }
            Err(what) => {
                return Err(Violation {
                    target: target.name(),
                    input,
                    what,
                });
            }
        }
        report.inputs += 1;
    }
    target.finish().await.map_err(|what| Violation {
        target: target.name(),
        input: Vec::new(),
        what,
    })?;
    report.outcomes = fuzzer.outcomes();
    report.corpus = fuzzer.corpus_len();
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let corpus = vec![b"{\"op\":\"list\"}".to_vec()];
        let mut a = Fuzzer::new(7, corpus.clone(), &[b"token"]);
        let mut b = Fuzzer::new(7, corpus, &[b"token"]);
        for _ in 0..1_000 {
            assert_eq!(a.next_input(), b.next_input());
        }
    }

    #[test]
    fn a_new_outcome_keeps_its_input_and_a_known_one_does_not() {
        let mut f = Fuzzer::new(1, vec![b"a".to_vec()], &[]);
        assert!(f.observe(b"b", "err:x"));
        assert!(!f.observe(b"c", "err:x"));
        assert_eq!(f.corpus_len(), 2);
        assert_eq!(f.outcomes(), 1);
    }

    #[test]
    fn inputs_stay_within_the_size_limit_and_vary() {
        let mut f = Fuzzer::new(3, vec![b"hello world".to_vec()], &[b"{}", b"\"op\""]);
        let mut distinct = HashSet::new();
        for _ in 0..5_000 {
            let input = f.next_input();
            assert!(input.len() <= MAX_LEN);
            distinct.insert(input);
        }
        assert!(distinct.len() > 3_000, "{}", distinct.len());
    }
}
