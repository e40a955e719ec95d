//! Sleeper's key order, and how we make Arrow's byte-wise order agree with it.
//!
//! Sleeper compares strings as Java's `String.compareTo` (UTF-16 code units) and byte arrays as
//! signed Java bytes. Arrow and DataFusion compare UTF-8 and binary as unsigned bytes. The two
//! orders differ only for characters U+E000..=U+FFFF against characters above U+FFFF, and for
//! bytes >= 0x80. Rather than comparing row by row in a slower custom comparator, we rewrite key
//! bytes into a form whose unsigned order *is* Sleeper's order, and let Arrow's vectorised kernels
//! and row format do the comparing:
//! - byte arrays: flip the top bit of each byte (signed order == unsigned order of `b ^ 0x80`);
//! - strings: UTF-8 lead bytes 0xEE and 0xEF (U+E000..=U+FFFF) become 0xF5 and 0xF6, which sort
//!   above the lead bytes of supplementary characters (0xF0..=0xF4), exactly as their UTF-16 code
//!   units sort above surrogates. Every other byte keeps its place.
//!
//! The rewrite is only used for comparisons: the data written out is never changed. The string
//! rewrite leaves every other byte as it is, so a string column with no byte 0xEE or 0xEF (the
//! common case) is reinterpreted without copying.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, GenericByteArray};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{ByteArrayType, DataType};

use super::schema::PrimitiveType;

pub fn compare_strings(a: &str, b: &str) -> Ordering {
    compare_rewritten(a.as_bytes(), b.as_bytes(), rewrite_string_byte)
}

pub fn compare_byte_arrays(a: &[u8], b: &[u8]) -> Ordering {
    compare_rewritten(a, b, rewrite_binary_byte)
}

/// The rewrite is a bijection on bytes, so only the first differing byte needs rewriting.
fn compare_rewritten(a: &[u8], b: &[u8], rewrite: fn(u8) -> u8) -> Ordering {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => rewrite(a[i]).cmp(&rewrite(b[i])),
        None => a.len().cmp(&b.len()),
    }
}

#[inline]
fn rewrite_string_byte(byte: u8) -> u8 {
    match byte {
        0xEE => 0xF5,
        0xEF => 0xF6,
        other => other,
    }
}

#[inline]
fn rewrite_binary_byte(byte: u8) -> u8 {
    byte ^ 0x80
}

/// The bytes of a key value in a form whose unsigned order is Sleeper's order.
pub fn order_preserving_bytes(key_type: PrimitiveType, bytes: &[u8]) -> Cow<'_, [u8]> {
    let rewrite = match key_type {
        PrimitiveType::String => rewrite_string_byte,
        PrimitiveType::ByteArray => rewrite_binary_byte,
        PrimitiveType::Int | PrimitiveType::Long => return Cow::Borrowed(bytes),
    };
    if bytes.iter().all(|&b| rewrite(b) == b) {
        Cow::Borrowed(bytes)
    } else {
        Cow::Owned(bytes.iter().map(|&b| rewrite(b)).collect())
    }
}

/// An array whose Arrow order equals Sleeper's order of `array`: integers as they are, strings and
/// byte arrays as binary with the rewrite above (zero-copy where nothing needs rewriting).
pub fn sleeper_ordered_array(key_type: PrimitiveType, array: &ArrayRef) -> ArrayRef {
    match (key_type, array.data_type()) {
        (PrimitiveType::String, DataType::Utf8) => {
            let strings = array
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>()
                .expect("Utf8");
            // A fold over every byte vectorises; a search that stops at the first hit does not,
            // and there is almost never a hit.
            let needs_rewrite = |used: &[u8]| {
                used.iter()
                    .fold(false, |found, &b| found | (b & 0xFE == 0xEE))
            };
            rewrite_bytes_array(strings, rewrite_string_byte, needs_rewrite)
        }
        (PrimitiveType::ByteArray, DataType::Binary) => {
            let bytes = array
                .as_any()
                .downcast_ref::<BinaryArray>()
                .expect("Binary");
            // Flipping the top bit changes every byte, so byte arrays are always rewritten: a
            // column left as it is would not compare consistently with one rewritten.
            rewrite_bytes_array(bytes, rewrite_binary_byte, |_| true)
        }
        _ => Arc::clone(array),
    }
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

    #[test]
    fn strings_follow_utf16_order_above_the_bmp() {
        let samples = [
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
        for a in samples {
            for b in samples {
                assert_eq!(compare_strings(a, b), java_compare(a, b), "{a:?} vs {b:?}");
            }
        }
        // The case where UTF-8 byte order disagrees with Java.
        assert_eq!("\u{ff21}".cmp("\u{1f600}"), Ordering::Less);
        assert_eq!(compare_strings("\u{ff21}", "\u{1f600}"), Ordering::Greater);
    }

    #[test]
    fn byte_arrays_compare_as_signed_bytes() {
        let samples: [&[u8]; 7] = [
            &[],
            &[0x00],
            &[0x7f],
            &[0x80],
            &[0xff],
            &[0x00, 0x80],
            &[0xff, 0x00],
        ];
        for a in samples {
            for b in samples {
                let signed = |x: &[u8]| x.iter().map(|&v| v as i8).collect::<Vec<_>>();
                assert_eq!(
                    compare_byte_arrays(a, b),
                    signed(a).cmp(&signed(b)),
                    "{a:?} vs {b:?}"
                );
            }
        }
        assert_eq!(compare_byte_arrays(&[0x80], &[0x7f]), Ordering::Less);
    }

    #[test]
    fn ordered_arrays_sort_as_sleeper_does_and_share_buffers_when_possible() {
        use datafusion::arrow::array::StringArray;
        let plain: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let rewritten = sleeper_ordered_array(PrimitiveType::String, &plain);
        let original = plain.as_any().downcast_ref::<StringArray>().unwrap();
        let as_binary = rewritten.as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(original.values().as_ptr(), as_binary.values().as_ptr());

        let mixed: ArrayRef = Arc::new(StringArray::from(vec!["\u{ff21}", "\u{1f600}"]));
        let ordered = sleeper_ordered_array(PrimitiveType::String, &mixed);
        let ordered = ordered.as_any().downcast_ref::<BinaryArray>().unwrap();
        assert!(ordered.value(0) > ordered.value(1));
    }
}
