//! The check that a file's rows are in the table's order: the merge of files not in it would be
//! out of order, silently.

use std::cmp::Ordering;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::row::{OwnedRow, Rows};
use datafusion::parquet::file::metadata::ParquetMetaData;

use super::fetch::RowGroupRead;
use crate::model::{KeyOrder, KeyValue};

/// Where a file's rows stand in the check.
pub(super) struct OrderCheck {
    order: KeyOrder,
    /// The row key columns, the batch's first.
    key_columns: usize,
    /// The last row read, in row format and as key values (for the message).
    last: Option<(OwnedRow, Vec<KeyValue>)>,
    rows_checked: u64,
    /// The first row number in the file, and the row count, of each row group read.
    row_groups: Vec<(u64, u64)>,
}

/// A row that sorts before the row read before it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unsorted {
    /// Its row number in the file.
    pub(super) row: u64,
    pub(super) key: String,
    pub(super) previous: String,
    /// The other engine's order, where the two rows are in it: the file was written for it.
    pub(super) other_order_fits: Option<KeyOrder>,
}

impl OrderCheck {
    /// The check of a file whose rows `reads` are read, in order.
    pub(super) fn new(
        order: KeyOrder,
        key_columns: usize,
        metadata: &ParquetMetaData,
        reads: &[RowGroupRead],
    ) -> Self {
        let mut starts = Vec::with_capacity(metadata.num_row_groups());
        let mut start = 0u64;
        for group in metadata.row_groups() {
            starts.push(start);
            start += group.num_rows() as u64;
        }
        OrderCheck {
            order,
            key_columns,
            last: None,
            rows_checked: 0,
            row_groups: reads
                .iter()
                .map(|read| {
                    let first = starts[read.row_group] + read.first_row as u64;
                    (first, (read.end_row - read.first_row) as u64)
                })
                .collect(),
        }
    }

    /// Checks the next batch read, whose keys are `rows` (in row format, in the table's order)
    /// with their eight-byte `prefixes`. Every row read is checked; rows a file holds past the
    /// region's end are not read, so not checked.
    pub(super) fn check(
        &mut self,
        batch: &RecordBatch,
        rows: &Rows,
        prefixes: &[u64],
    ) -> Result<(), Unsorted> {
        let Some(last) = prefixes.len().checked_sub(1) else {
            return Ok(());
        };
        if let Some((previous, _)) = &self.last {
            if rows.row(0) < previous.row() {
                return Err(self.unsorted(batch, 0));
            }
        }
        // A fold over the prefixes vectorises; rows are compared only where prefixes tie.
        let (descends, ties) = prefixes
            .windows(2)
            .fold((false, false), |(descends, ties), pair| {
                (descends | (pair[1] < pair[0]), ties | (pair[1] == pair[0]))
            });
        if descends || ties {
            let descent = (1..prefixes.len()).find(|&i| match prefixes[i].cmp(&prefixes[i - 1]) {
                Ordering::Less => true,
                Ordering::Equal => rows.row(i) < rows.row(i - 1),
                Ordering::Greater => false,
            });
            if let Some(row) = descent {
                return Err(self.unsorted(batch, row));
            }
        }
        self.last = Some((rows.row(last).owned(), self.key_values(batch, last)));
        self.rows_checked += prefixes.len() as u64;
        Ok(())
    }

    /// The row number in the file of the `index`th row read.
    fn file_row(&self, index: u64) -> u64 {
        let mut before = 0;
        for &(start, rows) in &self.row_groups {
            if index < before + rows {
                return start + index - before;
            }
            before += rows;
        }
        index
    }

    fn key_values(&self, batch: &RecordBatch, row: usize) -> Vec<KeyValue> {
        (0..self.key_columns)
            .filter_map(|column| KeyValue::from_array(batch.column(column), row).ok())
            .collect()
    }

    fn unsorted(&self, batch: &RecordBatch, row: usize) -> Unsorted {
        let key = self.key_values(batch, row);
        let previous = match row {
            0 => self
                .last
                .as_ref()
                .map(|(_, values)| values.clone())
                .unwrap_or_default(),
            _ => self.key_values(batch, row - 1),
        };
        let other = self.order.other();
        let fits_other = other.compare_keys(&previous, &key) != Ordering::Greater;
        let show = |values: &[KeyValue]| {
            let shown: Vec<String> = values.iter().map(KeyValue::to_string).collect();
            format!("({})", shown.join(", "))
        };
        Unsorted {
            row: self.file_row(self.rows_checked + row as u64),
            key: show(&key),
            previous: show(&previous),
            other_order_fits: fits_other.then_some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::row::{RowConverter, SortField};
    use datafusion::parquet::file::metadata::ParquetMetaDataReader;

    use super::super::keys::prefix;
    use super::*;
    use crate::plan::merge::prune::tests::sorted_file;

    fn keyed(converter: &RowConverter, keys: &[i64]) -> (RecordBatch, Rows, Vec<u64>) {
        let schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Int64, false)]));
        let column: ArrayRef = Arc::new(Int64Array::from(keys.to_vec()));
        let batch = RecordBatch::try_new(schema, vec![Arc::clone(&column)]).unwrap();
        let rows = converter.convert_columns(&[column]).unwrap();
        let prefixes = rows.iter().map(prefix).collect();
        (batch, rows, prefixes)
    }

    /// Rows out of order are found inside a batch and across two, and named by their row in
    /// the file, counted past the row groups and rows that pruning skipped.
    #[test]
    fn a_descent_is_named_by_its_row_in_the_file() {
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&sorted_file(3, 100, 10))
            .unwrap();
        // Row group 0 skipped; rows 30.. of row group 1 (rows 130.. of the file), then row
        // group 2 (rows 200..).
        let reads = [
            RowGroupRead {
                row_group: 1,
                first_row: 30,
                end_row: 100,
            },
            RowGroupRead {
                row_group: 2,
                first_row: 0,
                end_row: 100,
            },
        ];
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let new_check = || OrderCheck::new(KeyOrder::DataFusion, 1, &metadata, &reads);

        let mut check = new_check();
        let ascending: Vec<i64> = (0..60).collect();
        let (batch, rows, prefixes) = keyed(&converter, &ascending);
        check.check(&batch, &rows, &prefixes).unwrap();
        let (batch, rows, prefixes) = keyed(&converter, &[60, 61, 61, 5]);
        let unsorted = check.check(&batch, &rows, &prefixes).unwrap_err();
        // The 64th row read, within the first 70 read (rows 130..200 of the file).
        assert_eq!(
            unsorted,
            Unsorted {
                row: 193,
                key: "(5)".into(),
                previous: "(61)".into(),
                other_order_fits: None,
            }
        );

        let mut check = new_check();
        let (batch, rows, prefixes) = keyed(&converter, &(0..75).collect::<Vec<_>>());
        check.check(&batch, &rows, &prefixes).unwrap();
        let (batch, rows, prefixes) = keyed(&converter, &[70, 80]);
        let unsorted = check.check(&batch, &rows, &prefixes).unwrap_err();
        // The 76th row read: the first 70 were rows 130..200, so the sixth of row group 2.
        assert_eq!(
            (
                unsorted.row,
                unsorted.key.as_str(),
                unsorted.previous.as_str()
            ),
            (205, "(70)", "(74)")
        );
    }
}
