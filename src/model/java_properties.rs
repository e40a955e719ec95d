//! Java `.properties` files, parsed and written as `java.util.Properties` does.

use std::collections::BTreeMap;

/// A Java properties file, parsed as `java.util.Properties.load` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JavaProperties {
    entries: BTreeMap<String, String>,
}

impl JavaProperties {
    pub fn parse(text: &str) -> Self {
        let mut entries = BTreeMap::new();
        let mut logical = String::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let trimmed = line.trim_start();
            if logical.is_empty()
                && (trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!'))
            {
                continue;
            }
            logical.push_str(trimmed);
            let trailing_backslashes = logical.chars().rev().take_while(|&c| c == '\\').count();
            if trailing_backslashes % 2 == 1 && lines.clone().next().is_some() {
                logical.pop();
                continue;
            }
            let (key, value) = split_key_value(&logical);
            entries.insert(key, value);
            logical.clear();
        }
        JavaProperties { entries }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.insert(key.into(), value.into());
    }

    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{}={}\n", escape(k, true), escape(v, false)))
            .collect()
    }
}

fn split_key_value(line: &str) -> (String, String) {
    let mut chars = line.char_indices().peekable();
    let mut key_end = line.len();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '=' | ':' | ' ' | '\t' | '\x0c' => {
                key_end = i;
                break;
            }
            _ => {}
        }
    }
    let rest = line[key_end..].trim_start_matches([' ', '\t', '\x0c']);
    let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
    let value = rest.trim_start_matches([' ', '\t', '\x0c']);
    (unescape(&line[..key_end]), unescape(value))
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(decoded) => out.push(decoded),
                    None => out.push_str(&hex),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn escape(text: &str, is_key: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if is_key || i == 0 => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_java_properties_syntax() {
        let text = "# comment\n! other comment\nkey1=value1\nkey2 : value 2\nkey3 value3\n\
                    multi=first \\\n    second\nescaped\\=key=a\\tb\\u0041\nempty=\n";
        let props = JavaProperties::parse(text);
        assert_eq!(props.get("key1"), Some("value1"));
        assert_eq!(props.get("key2"), Some("value 2"));
        assert_eq!(props.get("key3"), Some("value3"));
        assert_eq!(props.get("multi"), Some("first second"));
        assert_eq!(props.get("escaped=key"), Some("a\tbA"));
        assert_eq!(props.get("empty"), Some(""));
    }

    #[test]
    fn written_properties_read_back() {
        let mut props = JavaProperties::default();
        props.set("a key", "= value: with #specials\\ and\nnewline");
        props.set(
            "sleeper.table.schema",
            r#"{"rowKeyFields":[{"name":"k","type":"LongType"}]}"#,
        );
        assert_eq!(JavaProperties::parse(&props.to_text()), props);
    }
}
