//! The order of a table's keys. Sleeper has two, one per data engine, and a table's files are
//! sorted (and its partitions' regions filtered) in the order of the engine that wrote them
//! (`sleeper.table.data.engine`):
//! - DataFusion, the default engine: strings by their UTF-8 bytes, byte arrays as unsigned bytes
//!   (Sleeper's `rust/sleeper_core` sorts and filters with DataFusion's own comparisons);
//! - Java: strings as `String.compareTo` (UTF-16 code units), byte arrays as signed bytes.
//!
//! The two disagree only for characters U+E000..=U+FFFF against characters above U+FFFF, and for
//! bytes >= 0x80. Arrow compares strings and binary as unsigned bytes, so the DataFusion order is
//! Arrow's own. For the Java order, rather than comparing row by row in a slower custom
//! comparator, key bytes are rewritten into a form whose unsigned order *is* the Java order, and
//! Arrow's vectorised kernels and row format do the comparing:
//! - byte arrays: flip the top bit of each byte (signed order == unsigned order of `b ^ 0x80`);
//! - strings: UTF-8 lead bytes 0xEE and 0xEF (U+E000..=U+FFFF) become 0xF5 and 0xF6, which sort
//!   above the lead bytes of supplementary characters (0xF0..=0xF4), exactly as their UTF-16 code
//!   units sort above surrogates. Every other byte keeps its place.
//!
//! The rewrite is only used for comparisons: the data written out is never changed.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, GenericByteArray};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{ByteArrayType, DataType};

use super::key::KeyValue;
use super::schema::PrimitiveType;

/// The order of a table's keys: the order of the data engine that wrote its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyOrder {
    /// Sleeper's DataFusion engine, its default: strings by UTF-8 bytes, byte arrays unsigned.
    #[default]
    DataFusion,
    /// Sleeper's Java engine: strings by UTF-16 code units, byte arrays as signed bytes.
    Java,
}

impl KeyOrder {
    /// The order of a `sleeper.table.data.engine` value (Sleeper's `DataEngine`, any case).
    pub fn of_data_engine(engine: &str) -> Option<Self> {
        match engine.trim().to_ascii_uppercase().as_str() {
            "DATAFUSION" | "DATAFUSION_EXPERIMENTAL" => Some(KeyOrder::DataFusion),
            "JAVA" => Some(KeyOrder::Java),
            _ => None,
        }
    }

    /// The data engine's name, as Sleeper's properties spell it.
    pub fn data_engine(self) -> &'static str {
        match self {
            KeyOrder::DataFusion => "DATAFUSION",
            KeyOrder::Java => "JAVA",
        }
    }

    pub fn other(self) -> Self {
        match self {
            KeyOrder::DataFusion => KeyOrder::Java,
            KeyOrder::Java => KeyOrder::DataFusion,
        }
    }

    pub fn compare(self, a: &KeyValue, b: &KeyValue) -> Ordering {
        match (a, b) {
            (KeyValue::Int(a), KeyValue::Int(b)) => a.cmp(b),
            (KeyValue::Long(a), KeyValue::Long(b)) => a.cmp(b),
            (KeyValue::String(a), KeyValue::String(b)) => self.compare_strings(a, b),
            (KeyValue::Bytes(a), KeyValue::Bytes(b)) => {
                self.compare_bytes(PrimitiveType::ByteArray, a, b)
            }
            // Values of one column always share a type; this only keeps the order total.
            _ => (a.key_type() as u8).cmp(&(b.key_type() as u8)),
        }
    }

    pub fn compare_strings(self, a: &str, b: &str) -> Ordering {
        self.compare_bytes(PrimitiveType::String, a.as_bytes(), b.as_bytes())
    }

    /// Rows of keys, compared column by column.
    pub fn compare_keys(self, a: &[KeyValue], b: &[KeyValue]) -> Ordering {
        a.iter()
            .zip(b)
            .map(|(x, y)| self.compare(x, y))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.len().cmp(&b.len()))
    }

    /// The rewrite is a bijection on bytes, so only the first differing byte needs rewriting.
    fn compare_bytes(self, key_type: PrimitiveType, a: &[u8], b: &[u8]) -> Ordering {
        if !matches!(self, KeyOrder::Java) {
            return a.cmp(b);
        }
        let rewrite = self.rewrite(key_type);
        match first_difference(a, b) {
            Some(i) => rewrite(a[i]).cmp(&rewrite(b[i])),
            None => a.len().cmp(&b.len()),
        }
    }

    fn rewrite(self, key_type: PrimitiveType) -> fn(u8) -> u8 {
        match (self, key_type) {
            (KeyOrder::Java, PrimitiveType::String) => rewrite_java_string_byte,
            (KeyOrder::Java, PrimitiveType::ByteArray) => rewrite_java_binary_byte,
            _ => std::convert::identity,
        }
    }

    /// Whether Arrow's (and so DataFusion's and Parquet's) comparison of `key_type` is this order.
    pub fn agrees_with_arrow(self, key_type: PrimitiveType) -> bool {
        self == KeyOrder::DataFusion || matches!(key_type, PrimitiveType::Int | PrimitiveType::Long)
    }

    /// The bytes of a key value in a form whose unsigned order is this order.
    pub fn ordered_bytes(self, key_type: PrimitiveType, bytes: &[u8]) -> Cow<'_, [u8]> {
        let rewrite = self.rewrite(key_type);
        if bytes.iter().all(|&b| rewrite(b) == b) {
            Cow::Borrowed(bytes)
        } else {
            Cow::Owned(bytes.iter().map(|&b| rewrite(b)).collect())
        }
    }

    /// An array whose Arrow order is this order of `array`: integers as they are, strings and
    /// byte arrays as binary, rewritten for the Java order (zero-copy where nothing needs it).
    pub fn ordered_array(self, key_type: PrimitiveType, array: &ArrayRef) -> ArrayRef {
        match (self, key_type, array.data_type()) {
            (KeyOrder::DataFusion, PrimitiveType::String, DataType::Utf8) => {
                rewrite_bytes_array(array.as_string::<i32>(), std::convert::identity, |_| false)
            }
            (KeyOrder::Java, PrimitiveType::String, DataType::Utf8) => {
                // A fold over every byte vectorises; a search that stops at the first hit does
                // not, and there is almost never a hit.
                let needs_rewrite = |used: &[u8]| {
                    used.iter()
                        .fold(false, |found, &b| found | (b & 0xFE == 0xEE))
                };
                rewrite_bytes_array(
                    array.as_string::<i32>(),
                    rewrite_java_string_byte,
                    needs_rewrite,
                )
            }
            (KeyOrder::Java, PrimitiveType::ByteArray, DataType::Binary) => {
                // Flipping the top bit changes every byte, so byte arrays are always rewritten: a
                // column left as it is would not compare consistently with one rewritten.
                rewrite_bytes_array(array.as_binary::<i32>(), rewrite_java_binary_byte, |_| true)
            }
            _ => Arc::clone(array),
        }
    }
}

impl fmt::Display for KeyOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyOrder::DataFusion => {
                "the DataFusion engine's order (strings by UTF-8 bytes, byte arrays unsigned)"
            }
            KeyOrder::Java => {
                "the Java engine's order (strings by UTF-16 code units, byte arrays signed)"
            }
        })
    }
}

impl FromStr for KeyOrder {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        KeyOrder::of_data_engine(value).ok_or_else(|| {
            format!("{value:?} is not a Sleeper data engine: use datafusion or java")
        })
    }
}

/// Where two byte strings first differ. Long shared prefixes (file URLs, say) are skipped a
/// chunk at a time with slice equality, which compiles to `memcmp`.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    const CHUNK: usize = 16;
    let length = a.len().min(b.len());
    let mut start = 0;
    while start + CHUNK <= length && a[start..start + CHUNK] == b[start..start + CHUNK] {
        start += CHUNK;
    }
    (start..length).find(|&i| a[i] != b[i])
}

#[inline]
fn rewrite_java_string_byte(byte: u8) -> u8 {
    match byte {
        0xEE => 0xF5,
        0xEF => 0xF6,
        other => other,
    }
}

#[inline]
fn rewrite_java_binary_byte(byte: u8) -> u8 {
    byte ^ 0x80
}

fn rewrite_bytes_array<T: ByteArrayType<Offset = i32>>(
    array: &GenericByteArray<T>,
    rewrite: fn(u8) -> u8,
    needs_rewrite: impl Fn(&[u8]) -> bool,
) -> ArrayRef {
    let offsets = array.value_offsets();
    let start = offsets[0] as usize;
    let end = offsets[offsets.len() - 1] as usize;
    let used = &array.value_data()[start..end];
    let values = if needs_rewrite(used) {
        let mut rewritten = array.value_data().to_vec();
        rewritten[start..end]
            .iter_mut()
            .for_each(|b| *b = rewrite(*b));
        Buffer::from_vec(rewritten)
    } else {
        array.values().clone()
    };
    Arc::new(BinaryArray::new(
        array.offsets().clone(),
        values,
        array.nulls().cloned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn java_compare(a: &str, b: &str) -> Ordering {
        a.encode_utf16().cmp(b.encode_utf16())
    }

    fn strings(order: KeyOrder, a: &str, b: &str) -> Ordering {
        order.compare(&KeyValue::String(a.into()), &KeyValue::String(b.into()))
    }

    const STRINGS: [&str; 14] = [
        "",
        "a",
        "ab",
        "\u{7f}",
        "\u{80}",
        "\u{d7ff}",
        "\u{e000}",
        "\u{ff21}",
        "\u{ffff}",
        "\u{10000}",
        "\u{1f600}",
        "\u{10ffff}",
        "a\u{ffff}",
        "a\u{10000}",
    ];

    #[test]
    fn java_strings_follow_utf16_order_and_datafusion_strings_utf8_bytes() {
        for a in STRINGS {
            for b in STRINGS {
                assert_eq!(
                    strings(KeyOrder::Java, a, b),
                    java_compare(a, b),
                    "{a:?} vs {b:?}"
                );
                assert_eq!(
                    strings(KeyOrder::DataFusion, a, b),
                    a.cmp(b),
                    "{a:?} vs {b:?}"
                );
            }
        }
        // The case where the engines disagree.
        assert_eq!(
            strings(KeyOrder::DataFusion, "\u{ff21}", "\u{1f600}"),
            Ordering::Less
        );
        assert_eq!(
            strings(KeyOrder::Java, "\u{ff21}", "\u{1f600}"),
            Ordering::Greater
        );
    }

    #[test]
    fn java_byte_arrays_are_signed_and_datafusion_byte_arrays_unsigned() {
        let samples: [&[u8]; 7] = [
            &[],
            &[0x00],
            &[0x7f],
            &[0x80],
            &[0xff],
            &[0x00, 0x80],
            &[0xff, 0x00],
        ];
        let bytes = |order: KeyOrder, a: &[u8], b: &[u8]| {
            order.compare(&KeyValue::Bytes(a.to_vec()), &KeyValue::Bytes(b.to_vec()))
        };
        for a in samples {
            for b in samples {
                let signed = |x: &[u8]| x.iter().map(|&v| v as i8).collect::<Vec<_>>();
                assert_eq!(
                    bytes(KeyOrder::Java, a, b),
                    signed(a).cmp(&signed(b)),
                    "{a:?} vs {b:?}"
                );
                assert_eq!(
                    bytes(KeyOrder::DataFusion, a, b),
                    a.cmp(b),
                    "{a:?} vs {b:?}"
                );
            }
        }
        assert_eq!(bytes(KeyOrder::Java, &[0x80], &[0x7f]), Ordering::Less);
        assert_eq!(
            bytes(KeyOrder::DataFusion, &[0x80], &[0x7f]),
            Ordering::Greater
        );
    }

    #[test]
    fn ordered_arrays_sort_in_their_order_and_share_buffers_when_possible() {
        use datafusion::arrow::array::StringArray;
        let plain: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let original = plain.as_string::<i32>();
        for order in [KeyOrder::Java, KeyOrder::DataFusion] {
            let rewritten = order.ordered_array(PrimitiveType::String, &plain);
            assert_eq!(
                original.values().as_ptr(),
                rewritten.as_binary::<i32>().values().as_ptr()
            );
        }

        let mixed: ArrayRef = Arc::new(StringArray::from(vec!["\u{ff21}", "\u{1f600}"]));
        let java = KeyOrder::Java.ordered_array(PrimitiveType::String, &mixed);
        assert!(java.as_binary::<i32>().value(0) > java.as_binary::<i32>().value(1));
        let datafusion = KeyOrder::DataFusion.ordered_array(PrimitiveType::String, &mixed);
        assert!(datafusion.as_binary::<i32>().value(0) < datafusion.as_binary::<i32>().value(1));
    }

    #[test]
    fn data_engines_name_their_order() {
        assert_eq!(
            KeyOrder::of_data_engine("datafusion"),
            Some(KeyOrder::DataFusion)
        );
        assert_eq!(
            KeyOrder::of_data_engine("DATAFUSION_EXPERIMENTAL"),
            Some(KeyOrder::DataFusion)
        );
        assert_eq!(KeyOrder::of_data_engine("Java"), Some(KeyOrder::Java));
        assert_eq!(KeyOrder::of_data_engine("spark"), None);
        assert!("rust"
            .parse::<KeyOrder>()
            .unwrap_err()
            .contains("datafusion or java"));
    }
}
