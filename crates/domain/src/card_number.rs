//! Recognizing primary account numbers (card numbers) in free text and JSON, so raw card data
//! can be refused at the door (DESIGN.md §6).
//!
//! **The rule.** A *digit run* is a maximal sequence of ASCII digits in which a single space or
//! a single dash may stand between two digits (`4111 1111 1111 1111`, `4111-1111-1111-1111`).
//! A run is a card number when
//!
//! 1. it holds 13 to 19 digits — a longer run (20+ digits, with or without separators) is
//!    never cut into a shorter "match";
//! 2. it stands alone: the characters on either side are not letters, digits or `_` (so a digit
//!    stretch inside an Azotte id such as `ten_01jd…` or a token such as `azr_…` never counts),
//!    and it is not preceded by `+` (an E.164 phone number such as `+4915112345678`);
//! 3. its digits pass the Luhn check.
//!
//! Anything else is a boundary: `"`, `,`, `.`, `:`, `/`, a newline, two separators in a row, a
//! separator not followed by a digit. About one in ten random standalone 13–19-digit numbers
//! passes Luhn, so such numbers in ordinary fields are refused too; that is the price of never
//! letting a card number in. `docs/security.md` lists what is and is not detected.

use serde_json::Value;

const MIN_DIGITS: usize = 13;
const MAX_DIGITS: usize = 19;

/// Longest object key shown in a field path; longer keys are shown as `*`.
const MAX_KEY_IN_PATH: usize = 64;

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_separator(c: char) -> bool {
    c == ' ' || c == '-'
}

/// The Luhn checksum of `digits` (values 0–9, most significant first) is valid.
pub fn luhn_valid(digits: &[u8]) -> bool {
    // From the right, every second digit is doubled, and a two-digit result counts as its sum.
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, u32::from(d) * 2) {
            (0, _) => u32::from(d),
            (_, x) if x > 9 => x - 9,
            (_, x) => x,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `text` holds a card number by the rule of this module.
pub fn contains_card_number(text: &str) -> bool {
    let mut chars = text.chars().peekable();
    // The character before the current position (None at the start).
    let mut before: Option<char> = None;
    while let Some(c) = chars.next() {
        if !c.is_ascii_digit() {
            before = Some(c);
            continue;
        }
        // A run starts at `c`; `before` is the character preceding it.
        let mut digits = [0u8; MAX_DIGITS];
        let mut n = 0usize;
        let mut push = |d: char, n: &mut usize| {
            if *n < MAX_DIGITS {
                digits[*n] = d as u8 - b'0';
            }
            *n += 1;
        };
        push(c, &mut n);
        let mut last = c;
        loop {
            match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    push(d, &mut n);
                    last = d;
                }
                Some(s) if is_separator(s) => {
                    // A separator belongs to the run only between two digits.
                    let mut ahead = chars.clone();
                    ahead.next();
                    match ahead.peek().copied() {
                        Some(d) if d.is_ascii_digit() => {
                            chars.next();
                        }
                        _ => break,
                    }
                }
                _ => break,
            }
        }
        let after = chars.peek().copied();
        let standalone = !before.is_some_and(|b| is_word(b) || b == '+') && !after.is_some_and(is_word);
        if standalone && (MIN_DIGITS..=MAX_DIGITS).contains(&n) && luhn_valid(&digits[..n]) {
            return true;
        }
        before = Some(last);
    }
    false
}

/// The path of the first value in `value` that holds a card number: an object key or string
/// at any depth, or a number (its decimal text). `Some("")` is the document itself; keys are
/// joined with `.`, array indexes written `[i]` (`metadata.note`, `items[2].pan`). A key that
/// itself holds a card number (or is very long) is written `*`, so the path never echoes it.
pub fn find_in_json(value: &Value) -> Option<String> {
    let mut path = String::new();
    walk(value, &mut path).then_some(path)
}

fn walk(value: &Value, path: &mut String) -> bool {
    match value {
        Value::String(s) => contains_card_number(s),
        Value::Number(n) => contains_card_number(&n.to_string()),
        Value::Null | Value::Bool(_) => false,
        Value::Array(items) => items.iter().enumerate().any(|(i, v)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let hit = walk(v, path);
            if !hit {
                path.truncate(len);
            }
            hit
        }),
        Value::Object(map) => map.iter().any(|(k, v)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            let key_hit = contains_card_number(k);
            if key_hit || k.chars().count() > MAX_KEY_IN_PATH {
                path.push('*');
            } else {
                path.push_str(k);
            }
            let hit = key_hit || walk(v, path);
            if !hit {
                path.truncate(len);
            }
            hit
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rule() {
        assert!(contains_card_number("4111111111111111"));
        assert!(contains_card_number("card 4111 1111 1111 1111, exp 12/30"));
        assert!(contains_card_number("4111-1111-1111-1111"));
        assert!(!contains_card_number("4111111111111112"));
        assert!(!contains_card_number("4111  1111 1111 1111"), "a double space splits the run");
        assert!(!contains_card_number("+4111111111111111"), "a phone number");
        assert!(!contains_card_number("x4111111111111111"));
        assert!(!contains_card_number("4111111111111111_"));
        assert!(!contains_card_number("41111111111111111115"), "20 digits are not cut to 16");
        assert!(contains_card_number("-4111111111111111"));
        assert!(contains_card_number("4111111111111111-"));
        assert!(contains_card_number("12.4111111111111111"));
    }

    #[test]
    fn json_paths() {
        assert_eq!(
            find_in_json(&json!({"a": {"b": [1, "x", "4111 1111 1111 1111"]}})).as_deref(),
            Some("a.b[2]")
        );
        assert_eq!(find_in_json(&json!("4111111111111111")).as_deref(), Some(""));
        assert_eq!(find_in_json(&json!({"m": {"4111111111111111": 1}})).as_deref(), Some("m.*"));
        assert_eq!(find_in_json(&json!({"n": 4111111111111111u64})).as_deref(), Some("n"));
        assert_eq!(find_in_json(&json!({"n": 12, "s": "ten_01jdq3m9x7e5k4w2c8v6b0n1p2"})), None);
    }
}
