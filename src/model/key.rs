//! One value of a key column, read from Arrow, Parquet's statistics and Sleeper's JSON.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int32Array, Int64Array, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
use datafusion::parquet::file::statistics::Statistics as ParquetStatistics;
use serde_json::{json, Value};

use super::schema::PrimitiveType;
use crate::error::Result;

/// One value of a key column. Values have no order of their own: a table's [`KeyOrder`](super::KeyOrder) orders them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i32),
    Long(i64),
    String(String),
    Bytes(Vec<u8>),
}

impl KeyValue {
    /// The bounds that a Parquet column chunk's statistics give a key column of `key_type`,
    /// where they are exact (byte-array statistics may be truncated). They are bounds in
    /// Parquet's order: the table's only where `KeyOrder::agrees_with_arrow` says so.
    pub fn bounds_from_statistics(
        statistics: &ParquetStatistics,
        key_type: PrimitiveType,
    ) -> Option<(KeyValue, KeyValue)> {
        match (statistics, key_type) {
            (ParquetStatistics::Int32(s), PrimitiveType::Int) => {
                Some((KeyValue::Int(*s.min_opt()?), KeyValue::Int(*s.max_opt()?)))
            }
            (ParquetStatistics::Int64(s), PrimitiveType::Long) => {
                Some((KeyValue::Long(*s.min_opt()?), KeyValue::Long(*s.max_opt()?)))
            }
            (ParquetStatistics::ByteArray(s), PrimitiveType::String | PrimitiveType::ByteArray)
                if s.min_is_exact() && s.max_is_exact() =>
            {
                let (min, max) = (s.min_opt()?.data(), s.max_opt()?.data());
                Some(match key_type {
                    PrimitiveType::String => (
                        KeyValue::String(std::str::from_utf8(min).ok()?.to_owned()),
                        KeyValue::String(std::str::from_utf8(max).ok()?.to_owned()),
                    ),
                    _ => (KeyValue::Bytes(min.to_vec()), KeyValue::Bytes(max.to_vec())),
                })
            }
            _ => None,
        }
    }

    /// Bounds of a key column of `key_type` on page `page`, from a Parquet column index. A
    /// column index may hold shorter byte arrays than the page's values, but they still bound
    /// them (Parquet's `PageIndex.md`: a truncated minimum is a prefix, a truncated maximum is
    /// rounded up). In Parquet's order, as [`KeyValue::bounds_from_statistics`].
    pub fn bounds_from_column_index(
        index: &ColumnIndexMetaData,
        page: usize,
        key_type: PrimitiveType,
    ) -> Option<(KeyValue, KeyValue)> {
        if page >= usize::try_from(index.num_pages()).ok()? {
            return None;
        }
        match (index, key_type) {
            (ColumnIndexMetaData::INT32(index), PrimitiveType::Int) => Some((
                KeyValue::Int(*index.min_value(page)?),
                KeyValue::Int(*index.max_value(page)?),
            )),
            (ColumnIndexMetaData::INT64(index), PrimitiveType::Long) => Some((
                KeyValue::Long(*index.min_value(page)?),
                KeyValue::Long(*index.max_value(page)?),
            )),
            (ColumnIndexMetaData::BYTE_ARRAY(index), PrimitiveType::String) => Some((
                KeyValue::String(std::str::from_utf8(index.min_value(page)?).ok()?.to_owned()),
                KeyValue::String(std::str::from_utf8(index.max_value(page)?).ok()?.to_owned()),
            )),
            (ColumnIndexMetaData::BYTE_ARRAY(index), PrimitiveType::ByteArray) => Some((
                KeyValue::Bytes(index.min_value(page)?.to_vec()),
                KeyValue::Bytes(index.max_value(page)?.to_vec()),
            )),
            _ => None,
        }
    }

    /// The smallest value of a type: the minimum of an unbounded range.
    pub fn minimum(key_type: PrimitiveType) -> Self {
        match key_type {
            PrimitiveType::Int => KeyValue::Int(i32::MIN),
            PrimitiveType::Long => KeyValue::Long(i64::MIN),
            PrimitiveType::String => KeyValue::String(String::new()),
            PrimitiveType::ByteArray => KeyValue::Bytes(Vec::new()),
        }
    }

    /// The value at `row` of an Int32, Int64, Utf8 or Binary array.
    pub fn from_array(array: &dyn Array, row: usize) -> Result<Self, ArrowError> {
        Ok(match array.data_type() {
            DataType::Int32 => KeyValue::Int(array.as_primitive::<Int32Type>().value(row)),
            DataType::Int64 => KeyValue::Long(array.as_primitive::<Int64Type>().value(row)),
            DataType::Utf8 => KeyValue::String(array.as_string::<i32>().value(row).to_owned()),
            DataType::Binary => KeyValue::Bytes(array.as_binary::<i32>().value(row).to_vec()),
            other => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "{other} values are not Sleeper keys"
                )))
            }
        })
    }

    /// An array of `key_type` holding `values` (values of another type become nulls).
    pub fn array_of(
        values: impl IntoIterator<Item = Option<KeyValue>>,
        key_type: PrimitiveType,
    ) -> ArrayRef {
        let values = values.into_iter();
        match key_type {
            PrimitiveType::Int => Arc::new(Int32Array::from_iter(values.map(|v| match v {
                Some(KeyValue::Int(i)) => Some(i),
                _ => None,
            }))),
            PrimitiveType::Long => Arc::new(Int64Array::from_iter(values.map(|v| match v {
                Some(KeyValue::Long(l)) => Some(l),
                _ => None,
            }))),
            PrimitiveType::String => Arc::new(StringArray::from_iter(values.map(|v| match v {
                Some(KeyValue::String(s)) => Some(s),
                _ => None,
            }))),
            PrimitiveType::ByteArray => Arc::new(BinaryArray::from_iter(values.map(|v| match v {
                Some(KeyValue::Bytes(b)) => Some(b),
                _ => None,
            }))),
        }
    }

    pub fn key_type(&self) -> PrimitiveType {
        match self {
            KeyValue::Int(_) => PrimitiveType::Int,
            KeyValue::Long(_) => PrimitiveType::Long,
            KeyValue::String(_) => PrimitiveType::String,
            KeyValue::Bytes(_) => PrimitiveType::ByteArray,
        }
    }

    /// The value in Sleeper's Region JSON (strings Base64-encoded where it says so).
    pub(super) fn to_json(&self, strings_base64: bool) -> Value {
        match self {
            KeyValue::Int(v) => json!(v),
            KeyValue::Long(v) => json!(v),
            KeyValue::String(s) if strings_base64 => json!(BASE64.encode(s)),
            KeyValue::String(s) => json!(s),
            KeyValue::Bytes(b) => json!(BASE64.encode(b)),
        }
    }

    pub(super) fn from_json(
        key_type: PrimitiveType,
        value: &Value,
        strings_base64: bool,
    ) -> std::result::Result<Self, String> {
        let decode = |v: &Value| {
            let text = v
                .as_str()
                .ok_or_else(|| format!("expected a Base64 string, found {v}"))?;
            BASE64
                .decode(text)
                .map_err(|e| format!("{text:?} is not Base64: {e}"))
        };
        match key_type {
            PrimitiveType::Int => value
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .map(KeyValue::Int)
                .ok_or_else(|| format!("expected a 32-bit integer, found {value}")),
            PrimitiveType::Long => value
                .as_i64()
                .map(KeyValue::Long)
                .ok_or_else(|| format!("expected a 64-bit integer, found {value}")),
            PrimitiveType::String if strings_base64 => String::from_utf8(decode(value)?)
                .map(KeyValue::String)
                .map_err(|e| format!("Base64 string is not UTF-8: {e}")),
            PrimitiveType::String => value
                .as_str()
                .map(|s| KeyValue::String(s.to_owned()))
                .ok_or_else(|| format!("expected a string, found {value}")),
            PrimitiveType::ByteArray => decode(value).map(KeyValue::Bytes),
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::Long(v) => write!(f, "{v}"),
            KeyValue::String(s) => write!(f, "{s:?}"),
            KeyValue::Bytes(b) => write!(
                f,
                "0x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        }
    }
}
