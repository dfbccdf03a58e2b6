//! Stop strings with hold-back: streamed text is released only once it is certain that it does
//! not start a stop string, so the emitted text never contains (any part of) a matched stop.

use crate::RuntimeError;

/// What one [`StopMatcher::push`] releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is now safe to emit (may be empty).
    pub emit: String,
    /// `true` when a stop string matched; `emit` then ends right before it.
    pub stopped: bool,
}

/// Incremental stop-string matcher over streamed text.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for the given stop strings (none is allowed: then all text passes through).
    pub fn new(stops: &[String]) -> Result<Self, RuntimeError> {
        if stops.iter().any(String::is_empty) {
            return Err(RuntimeError::InvalidOption {
                name: "stop",
                reason: "stop strings must not be empty".into(),
            });
        }
        Ok(Self {
            stops: stops.to_vec(),
            pending: String::new(),
            stopped: false,
        })
    }

    /// Whether a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Text currently held back.
    pub fn pending(&self) -> &str {
        &self.pending
    }

    /// Adds newly decoded text; returns what can be emitted now.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        self.pending.push_str(text);
        // Earliest full match wins.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let mut emit = std::mem::take(&mut self.pending);
            emit.truncate(at);
            self.stopped = true;
            return StopOutcome {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let rest = self.pending.split_off(cut);
        let emit = std::mem::replace(&mut self.pending, rest);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// Ends the stream: releases whatever is held back (nothing after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, at a char boundary.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes()[..n] == text.as_bytes()[start..]
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns (all emitted text, stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops).unwrap();
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_across_several_tokens_is_never_emitted() {
        let stops: Vec<String> = vec!["\n\nUser".into()];
        let mut m = StopMatcher::new(&stops).unwrap();
        assert_eq!(m.push("Hello").emit, "Hello");
        // "\n" might start the stop: held back.
        let o = m.push(" world\n");
        assert_eq!(o.emit, " world");
        assert!(!o.stopped);
        assert_eq!(m.push("\n").emit, "");
        assert_eq!(m.push("Us").emit, "");
        assert_eq!(m.pending(), "\n\nUs");
        let o = m.push("er: hi");
        assert_eq!(o.emit, "");
        assert!(o.stopped);
        assert!(m.is_stopped());
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(
            run(&["\n\nUser"], &["a\n", "\nUs", "age"]),
            ("a\n\nUsage".to_string(), false)
        );
        // Released as soon as the mismatch is known, not only at the end.
        let stops: Vec<String> = vec!["\n\nUser".into()];
        let mut m = StopMatcher::new(&stops).unwrap();
        assert_eq!(m.push("a\n\nUs").emit, "a");
        assert_eq!(m.push("age").emit, "\n\nUsage");
    }

    #[test]
    fn match_inside_one_piece_truncates_before_it() {
        assert_eq!(run(&["STOP"], &["abcSTOPdef"]), ("abc".to_string(), true));
        assert_eq!(run(&["STOP"], &["STOP"]), (String::new(), true));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".to_string(), true));
        assert_eq!(
            run(&["xyz", "yz!"], &["ax", "y", "z!"]),
            ("a".to_string(), true)
        );
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(&[]).unwrap();
        assert_eq!(m.push("abc").emit, "abc");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn multibyte_text_and_stops() {
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".to_string(), true));
        assert_eq!(run(&["éa"], &["é", "é", "b"]), ("ééb".to_string(), false));
    }

    #[test]
    fn empty_stop_is_rejected() {
        assert!(StopMatcher::new(&[String::new()]).is_err());
    }
}
