//! A batch's sort keys: the table's key columns in row format, in the table's key order.

use std::cmp::Ordering;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{Row, RowConverter, Rows, SortField};

use crate::error::{Error, Result};
use crate::model::PrimitiveType;

/// A batch that passed the filters, with its keys in the table's order, as row format.
pub(super) struct KeyedBatch {
    pub(super) batch: RecordBatch,
    pub(super) keys: SortKeys,
}

/// Row-format keys, and the first eight bytes of each kept row's as a big-endian integer:
/// comparing two integers settles almost every comparison without touching the rows.
pub(super) struct SortKeys {
    /// Every row of the batch as read, kept or not (the order check reads them all).
    pub(super) rows: Rows,
    /// The position in `rows` of each kept row, when the filters dropped some.
    pub(super) kept: Option<Vec<u32>>,
    pub(super) prefixes: Vec<u64>,
}

/// Zero padding only ever makes a shorter row tie with or sort before a longer one, which the
/// full comparison then settles.
pub(super) fn prefix(row: Row<'_>) -> u64 {
    let bytes = row.as_ref();
    let mut prefix = [0u8; 8];
    let length = bytes.len().min(8);
    prefix[..length].copy_from_slice(&bytes[..length]);
    u64::from_be_bytes(prefix)
}

impl SortKeys {
    pub(super) fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub(super) fn row(&self, kept_row: usize) -> Row<'_> {
        match &self.kept {
            Some(kept) => self.rows.row(kept[kept_row] as usize),
            None => self.rows.row(kept_row),
        }
    }

    pub(super) fn compare(&self, row: usize, other: &SortKeys, other_row: usize) -> Ordering {
        self.prefixes[row]
            .cmp(&other.prefixes[other_row])
            .then_with(|| self.row(row).cmp(&other.row(other_row)))
    }
}

/// Compares keys in row format: strings and byte arrays as the bytes their order gives them.
pub(super) fn key_converter(key_types: &[PrimitiveType]) -> Result<RowConverter> {
    let fields = key_types
        .iter()
        .map(|t| {
            SortField::new(match t {
                PrimitiveType::Int => DataType::Int32,
                PrimitiveType::Long => DataType::Int64,
                PrimitiveType::String | PrimitiveType::ByteArray => DataType::Binary,
            })
        })
        .collect();
    RowConverter::new(fields).map_err(|source| Error::Arrow {
        context: "creating the key comparator".into(),
        source,
    })
}
