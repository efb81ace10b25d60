//! Delivery parsing and the latest-state rule: any body parses or is refused without a panic; a
//! body that parses is one a database accepts (no NUL in its id, bounded nesting); and of two
//! deliveries of one prediction the same one — the same body — is the stored state whichever
//! arrives first, also when they are equal but for their webhook ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prediction_inbox::domain::{MAX_DEPTH, Prediction, Progress, WebhookId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Two bodies in one input, split at the first NUL (which no valid body contains); the
    // input's length picks whether they share a timestamp, so that ties are common.
    let same_second = data.len() % 2 == 0;
    let (first, second) = text.split_once('\0').unwrap_or((text, r#"{"id":"x"}"#));
    let parsed: Vec<(&str, Progress)> = [(first, "msg_b", 7_i64), (second, "msg_a", 3)]
        .into_iter()
        .filter_map(|(body, id, timestamp)| {
            let prediction = Prediction::parse(body).ok()?;
            assert!(!prediction.id.as_str().contains('\0'));
            assert!(depth(body) <= MAX_DEPTH);
            let timestamp = if same_second { 5 } else { timestamp };
            let id = WebhookId::parse(id).expect("a webhook id");
            Some((body, Progress::of(&prediction, id, timestamp)))
        })
        .collect();
    if let [a, b] = parsed.as_slice() {
        assert_eq!(stored(a, b), stored(b, a), "{:?} {:?}", a.1, b.1);
    }
});

/// The body stored after `first` and then `then` arrive.
fn stored<'a>(first: &(&'a str, Progress), then: &(&'a str, Progress)) -> &'a str {
    if then.1.supersedes(&first.1) {
        then.0
    } else {
        first.0
    }
}

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
