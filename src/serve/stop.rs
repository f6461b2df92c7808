//! Stop strings over streamed text: the text is cut before the first stop string, and a piece
//! that could still be the start of one is held back until the next pieces show it is not, so a
//! stream never shows a part of a stop string that a non-streamed response would have cut.

/// Scans the pieces of one completion for its stop strings (none: every piece passes at once).
pub struct StopScanner<'a> {
    stops: &'a [String],
    /// Text received but not yet released: it ends with what could begin a stop string.
    held: String,
}

impl<'a> StopScanner<'a> {
    /// `stops` must not hold an empty string (the request's validation refuses one).
    pub fn new(stops: &'a [String]) -> StopScanner<'a> {
        StopScanner {
            stops,
            held: String::new(),
        }
    }

    /// Takes the next piece; returns the text now safe to show, and whether a stop string
    /// ended the completion (the text is then everything before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        // The earliest position whose rest could still grow into a stop string; everything
        // before it can begin none.
        let keep_from = self
            .held
            .char_indices()
            .map(|(at, _)| at)
            .find(|&at| {
                let tail = &self.held[at..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let released = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        (released, false)
    }

    /// The held text, once the completion ended without a stop string: nothing more can turn
    /// it into one.
    pub fn finish(self) -> String {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces' released texts, the text after the end, and whether a stop string was hit.
    fn scan(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut scanner = StopScanner::new(&stops);
        let mut out = Vec::new();
        for piece in pieces {
            let (text, hit) = scanner.push(piece);
            out.push(text);
            if hit {
                return (out, true);
            }
        }
        out.push(scanner.finish());
        (out, false)
    }

    #[test]
    fn without_stop_strings_every_piece_passes_at_once() {
        assert_eq!(
            scan(&[], &["Once", " upon"]),
            (vec!["Once".into(), " upon".into(), String::new()], false)
        );
    }

    #[test]
    fn the_text_is_cut_before_the_stop_string() {
        let (out, hit) = scan(&["cat"], &["The c", "at sat"]);
        assert!(hit);
        assert_eq!(out, ["The ", ""]);
    }

    #[test]
    fn a_possible_start_is_held_until_it_cannot_become_a_stop_string() {
        let (out, hit) = scan(&["cat."], &["the ca", "t", " sat"]);
        assert!(!hit);
        assert_eq!(out, ["the ", "", "cat sat", ""]);
        assert_eq!(out.concat(), "the cat sat");
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let (out, hit) = scan(&["ended"], &["it end"]);
        assert!(!hit);
        assert_eq!(out, ["it ", "end"]);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (out, hit) = scan(&["dog", "b"], &["a big dog"]);
        assert!(hit);
        assert_eq!(out, ["a "]);
    }

    #[test]
    fn multibyte_text_is_split_only_between_characters() {
        let (out, hit) = scan(&["é!"], &["café", " ok"]);
        assert!(!hit);
        assert_eq!(out, ["caf", "é ok", ""]);
    }
}
