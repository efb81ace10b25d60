//! The env-format settings file: `KEY=value` lines, as a shell would read them.
//!
//! Written here rather than taken from a crate because the common readers quote the offending
//! line in their errors, and a line of this file may hold a secret: an error here names the line
//! and its key, never what it holds.
//!
//! - blank lines and lines starting with `#` are skipped; `export ` before a key is allowed;
//! - a value in single quotes is taken as is; in double quotes, `\"`, `\\`, `\n` and `\t` are
//!   escapes; unquoted, it ends at a ` #` comment and may hold no whitespace (as in a shell, where
//!   `KEY=a b` would run `b`);
//! - a quoted value ends on its line; anything after it but a comment is an error.

use std::collections::HashMap;

/// Where a line went wrong, and why; never what it holds.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct Malformed {
    pub line: usize,
    what: String,
}

pub fn parse(text: &str) -> Result<HashMap<String, String>, Malformed> {
    let mut entries = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let malformed = |what: String| Malformed {
            line: index + 1,
            what,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err(malformed("not a KEY=value line".into()));
        };
        let key = key.trim_end();
        if !is_key(key) {
            return Err(malformed(
                "the part before `=` is not a variable name".into(),
            ));
        }
        let value =
            parse_value(value.trim_start()).map_err(|why| malformed(format!("{key}: {why}")))?;
        entries.insert(key.to_owned(), value);
    }
    Ok(entries)
}

fn is_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value after `=`; the reason it is malformed, which never repeats it.
fn parse_value(text: &str) -> Result<String, &'static str> {
    let (value, rest) = match text.chars().next() {
        Some('\'') => {
            let end = text[1..]
                .find('\'')
                .ok_or("the single quote is not closed on its line")?;
            (text[1..=end].to_owned(), &text[end + 2..])
        }
        Some('"') => double_quoted(&text[1..])?,
        _ => {
            let value = match text.find(" #").or_else(|| text.find("\t#")) {
                Some(comment) => &text[..comment],
                None => text,
            }
            .trim_end();
            if value.contains(char::is_whitespace) {
                return Err("the value has whitespace outside quotes; quote it");
            }
            if value.contains(['"', '\'']) {
                return Err("the value has a quote inside it; quote the whole value");
            }
            return Ok(value.to_owned());
        }
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err("something follows the quoted value");
    }
    Ok(value)
}

fn double_quoted(text: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some(c @ ('"' | '\\' | '$')) => value.push(c),
                _ => return Err("the value has an unknown escape"),
            },
            c => value.push(c),
        }
    }
    Err("the double quote is not closed on its line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_shell_reads() {
        let entries = parse(
            "# settings\n\nA=1\nexport B = two # a comment\nC='x y #z'\nD=\"a \\\"b\\\" \\\\ c\"  # c\nE=\nF=tok1,tok2\n",
        )
        .unwrap();
        let get = |key: &str| entries.get(key).map(String::as_str);
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two"));
        assert_eq!(get("C"), Some("x y #z"));
        assert_eq!(get("D"), Some("a \"b\" \\ c"));
        assert_eq!(get("E"), Some(""));
        assert_eq!(get("F"), Some("tok1,tok2"));
    }

    #[test]
    fn a_malformed_line_is_named_by_number_and_key_never_by_what_it_holds() {
        for (text, line, key) in [
            (
                "A=1\nINBOX_API_TOKENS=tok1-secret, tok2-secret\n",
                2,
                Some("INBOX_API_TOKENS"),
            ),
            ("SECRET='tok1-secret\n", 1, Some("SECRET")),
            ("SECRET=\"tok1-secret\n", 1, Some("SECRET")),
            ("SECRET='tok1' tok2-secret\n", 1, Some("SECRET")),
            ("SECRET=tok1\"secret\n", 1, Some("SECRET")),
            ("\n\ntok1-secret\n", 3, None),
            ("tok1 secret=x\n", 1, None),
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text}");
            let message = error.to_string();
            assert!(!message.contains("tok"), "{message}");
            if let Some(key) = key {
                assert!(message.contains(key), "{message}");
            }
        }
    }
}
