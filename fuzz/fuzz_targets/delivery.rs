//! Delivery parsing and the latest-state rule: any body parses or is refused without a panic; a
//! body that parses is one a database accepts (no NUL in its keys, bounded nesting); and the rule
//! is a total order, so that which of two deliveries wins never depends on which came first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prediction_inbox::domain::{MAX_DEPTH, Prediction, Progress};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Two bodies in one input, split at the first NUL (which no valid body contains).
    let (first, second) = text.split_once('\0').unwrap_or((text, r#"{"id":"x"}"#));
    let parsed: Vec<(Prediction, Progress)> = [(first, 7_i64), (second, 3)]
        .into_iter()
        .filter_map(|(body, timestamp)| {
            let prediction = Prediction::parse(body).ok()?;
            assert!(!prediction.id.as_str().contains('\0'));
            assert!(depth(body) <= MAX_DEPTH);
            let progress =
                Progress::new(prediction.status.as_ref(), prediction.logs_len, timestamp);
            Some((prediction, progress))
        })
        .collect();
    if let [(_, a), (_, b)] = parsed.as_slice() {
        // Exactly one of: a wins, b wins, they are equal — in either order of arrival.
        let outcomes = [a.supersedes(b), b.supersedes(a), a == b];
        assert_eq!(outcomes.iter().filter(|o| **o).count(), 1, "{a:?} {b:?}");
    }
});

/// Nesting of brackets outside strings.
fn depth(body: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for c in body.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}
