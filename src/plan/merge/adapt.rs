//! A file's columns turned into the table's: which file column feeds each table column, and a
//! cast where the file's type has another shape of the same values (nested field names or
//! nullability, as other writers choose them).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};

pub(super) struct ColumnAdapter {
    table: SchemaRef,
    /// For each table column, its place among the file columns read.
    positions: Vec<usize>,
    casts: Vec<Option<DataType>>,
}

impl ColumnAdapter {
    /// The adapter from a file's schema to the table's, and the file columns to read (in the
    /// file's order, as Parquet's projection gives them); the error names a column that does
    /// not fit.
    pub(super) fn new(table: SchemaRef, file: &Schema) -> Result<(Self, Vec<usize>), String> {
        let mut file_columns = Vec::with_capacity(table.fields().len());
        let mut casts = Vec::with_capacity(table.fields().len());
        for field in table.fields() {
            let (index, file_field) = file
                .column_with_name(field.name())
                .ok_or_else(|| format!("it has no column {:?}", field.name()))?;
            if file_field.data_type() == field.data_type() {
                casts.push(None);
            } else if same_values(file_field.data_type(), field.data_type()) {
                casts.push(Some(field.data_type().clone()));
            } else {
                return Err(format!(
                    "column {:?} is {} in the file but {} in the table",
                    field.name(),
                    file_field.data_type(),
                    field.data_type()
                ));
            }
            file_columns.push(index);
        }
        let mut selected = file_columns.clone();
        selected.sort_unstable();
        let positions = file_columns
            .iter()
            .map(|c| {
                selected
                    .binary_search(c)
                    .expect("selected holds every file column")
            })
            .collect();
        let adapter = ColumnAdapter {
            table,
            positions,
            casts,
        };
        Ok((adapter, selected))
    }

    /// A batch of the file's columns read as the table's.
    pub(super) fn adapt(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let columns = self
            .positions
            .iter()
            .zip(&self.casts)
            .map(|(&position, target)| {
                let column = batch.column(position);
                match target {
                    Some(target) => cast(column, target),
                    None => Ok(Arc::clone(column)),
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| format!("its values do not fit the table schema: {e}"))?;
        RecordBatch::try_new(Arc::clone(&self.table), columns)
            .map_err(|e| format!("its rows do not fit the table schema: {e}"))
    }
}

/// Whether two Arrow types hold the same values, whatever their nested fields are named and
/// whether those are declared nullable (a cast turns one into the other).
fn same_values(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) | (DataType::Map(x, _), DataType::Map(y, _)) => {
            same_values(x.data_type(), y.data_type())
        }
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(f, g)| same_values(f.data_type(), g.data_type()))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, ListArray};
    use datafusion::arrow::datatypes::{Field, Int64Type};

    use super::*;

    fn list_of_longs(item: &str, nullable: bool) -> DataType {
        DataType::List(Arc::new(Field::new(item, DataType::Int64, nullable)))
    }

    /// A file with its columns in another order, a list whose items another writer named, and
    /// an extra column reads as the table; a column of another type is named.
    #[test]
    fn file_columns_are_found_by_name_and_cast_only_between_shapes_of_the_same_values() {
        let table = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("tags", list_of_longs("element", false), false),
        ]));
        let file = Arc::new(Schema::new(vec![
            Field::new("extra", DataType::Utf8, false),
            Field::new("tags", list_of_longs("item", true), false),
            Field::new("key", DataType::Int64, false),
        ]));
        let (adapter, selected) = ColumnAdapter::new(Arc::clone(&table), &file).unwrap();
        assert_eq!(selected, [1, 2]);
        let tags = ListArray::from_iter_primitive::<Int64Type, _, _>([Some(vec![Some(7)])]);
        let projected = Arc::new(Schema::new(vec![
            file.field(1).clone(),
            file.field(2).clone(),
        ]));
        let batch = RecordBatch::try_new(
            projected,
            vec![Arc::new(tags), Arc::new(Int64Array::from(vec![3]))],
        )
        .unwrap();
        let adapted = adapter.adapt(&batch).unwrap();
        assert_eq!(adapted.schema(), table);
        assert_eq!(adapted.column(0).as_ref(), &Int64Array::from(vec![3]));

        let strings = Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("tags", list_of_longs("item", true), false),
        ]);
        let error = ColumnAdapter::new(Arc::clone(&table), &strings)
            .err()
            .unwrap();
        assert_eq!(
            error,
            "column \"key\" is Utf8 in the file but Int64 in the table"
        );
        let missing = Schema::new(vec![Field::new("key", DataType::Int64, false)]);
        let error = ColumnAdapter::new(table, &missing).err().unwrap();
        assert_eq!(error, "it has no column \"tags\"");
    }
}
