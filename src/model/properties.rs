//! The table properties sleeper-export uses, read as Sleeper's `TableProperties` reads them.

use datafusion::arrow::datatypes::Schema as ArrowSchema;
use datafusion::parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use datafusion::parquet::file::metadata::SortingColumn;
use datafusion::parquet::file::properties::{WriterProperties, WriterVersion};
use datafusion::parquet::schema::types::ColumnPath;

use super::compaction::{CompactionRules, AGGREGATIONS, FILTERS};
use super::java_properties::JavaProperties;
use super::order::KeyOrder;
use super::schema::{leaf_count, Schema};
use crate::error::{Error, Result};

pub const TABLE_ID: &str = "sleeper.table.id";
pub const TABLE_NAME: &str = "sleeper.table.name";
pub const SCHEMA: &str = "sleeper.table.schema";
const ROW_GROUP_ROWS: &str = "sleeper.table.parquet.rowgroup.rows.max";
const PAGE_SIZE: &str = "sleeper.table.parquet.page.size";
const COMPRESSION: &str = "sleeper.table.parquet.compression.codec";
const WRITER_VERSION: &str = "sleeper.table.parquet.writer.version";
const COLUMN_INDEX_TRUNCATE: &str = "sleeper.table.parquet.columnindex.truncate.length";
const STATISTICS_TRUNCATE: &str = "sleeper.table.parquet.statistics.truncate.length";
const DICTIONARY_ROW_KEYS: &str = "sleeper.table.parquet.dictionary.encoding.rowkey.fields";
const DICTIONARY_SORT_KEYS: &str = "sleeper.table.parquet.dictionary.encoding.sortkey.fields";
const DICTIONARY_VALUES: &str = "sleeper.table.parquet.dictionary.encoding.value.fields";
pub const DATA_ENGINE: &str = "sleeper.table.data.engine";

/// The codecs Sleeper allows (its `CompressionCodec`); `lzo` is among them, but no Parquet writer
/// here (nor Sleeper's DataFusion engine) can write it.
const SLEEPER_CODECS: [&str; 7] = [
    "uncompressed",
    "snappy",
    "gzip",
    "lzo",
    "brotli",
    "lz4",
    "zstd",
];

/// The instance property holding the default of a table property, as Sleeper names them
/// (`TableDefaultProperty`): `sleeper.table.X` falls back to `sleeper.default.table.X`.
pub fn instance_default(table_property: &str) -> String {
    table_property.replacen("sleeper.table.", "sleeper.default.table.", 1)
}

/// The properties of one table that an export needs, with Sleeper's defaults.
#[derive(Debug, Clone)]
pub struct TableProperties {
    pub table_id: String,
    pub table_name: String,
    pub schema: Schema,
    pub parquet: ParquetOptions,
    /// `sleeper.table.filters` as written, e.g. `ageOff(ts,86400000)`.
    pub filters: Option<String>,
    /// `sleeper.table.aggregations` as written, e.g. `sum(v),max(w)`.
    pub aggregations: Option<String>,
    /// The order of the table's keys, from its data engine (`sleeper.table.data.engine`).
    pub key_order: KeyOrder,
    pub raw: JavaProperties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetOptions {
    pub row_group_rows: usize,
    pub page_size: usize,
    pub compression: String,
    pub writer_version: String,
    pub column_index_truncate_length: usize,
    pub statistics_truncate_length: usize,
    pub dictionary_row_keys: bool,
    pub dictionary_sort_keys: bool,
    pub dictionary_values: bool,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            row_group_rows: 100_000,
            page_size: 131_072,
            compression: "zstd".into(),
            writer_version: "v2".into(),
            column_index_truncate_length: 128,
            statistics_truncate_length: 2_147_483_647,
            dictionary_row_keys: false,
            dictionary_sort_keys: false,
            dictionary_values: false,
        }
    }
}

/// A table's settings, each falling back to the instance's `sleeper.default.table.*` value.
struct Settings<'a> {
    table: &'a JavaProperties,
    instance: &'a JavaProperties,
}

impl Settings<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.table
            .get(key)
            .or_else(|| self.instance.get(&instance_default(key)))
            .map(str::to_owned)
    }

    fn number(&self, key: &str, default: usize) -> Result<usize> {
        self.get(key).map_or(Ok(default), |v| {
            v.trim().parse().map_err(|_| Error::Property {
                property: key.into(),
                message: format!("{v:?} is not a whole number"),
            })
        })
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key).map_or(Ok(default), |v| {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(Error::Property {
                    property: key.into(),
                    message: format!("{v:?} is not true or false"),
                }),
            }
        })
    }

    /// The Parquet settings, Sleeper's defaults where neither the table nor the instance sets
    /// them.
    fn parquet_options(&self) -> Result<ParquetOptions> {
        let defaults = ParquetOptions::default();
        Ok(ParquetOptions {
            row_group_rows: self.number(ROW_GROUP_ROWS, defaults.row_group_rows)?,
            page_size: self.number(PAGE_SIZE, defaults.page_size)?,
            compression: self
                .get(COMPRESSION)
                .map_or(defaults.compression, |v| v.trim().to_ascii_lowercase()),
            writer_version: self
                .get(WRITER_VERSION)
                .map_or(defaults.writer_version, |v| v.trim().to_ascii_lowercase()),
            column_index_truncate_length: self
                .number(COLUMN_INDEX_TRUNCATE, defaults.column_index_truncate_length)?,
            statistics_truncate_length: self
                .number(STATISTICS_TRUNCATE, defaults.statistics_truncate_length)?,
            dictionary_row_keys: self.flag(DICTIONARY_ROW_KEYS, defaults.dictionary_row_keys)?,
            dictionary_sort_keys: self.flag(DICTIONARY_SORT_KEYS, defaults.dictionary_sort_keys)?,
            dictionary_values: self.flag(DICTIONARY_VALUES, defaults.dictionary_values)?,
        })
    }
}

impl TableProperties {
    pub fn new(table_id: impl Into<String>, table_name: impl Into<String>, schema: Schema) -> Self {
        let mut properties = TableProperties {
            table_id: table_id.into(),
            table_name: table_name.into(),
            schema,
            parquet: ParquetOptions::default(),
            filters: None,
            aggregations: None,
            key_order: KeyOrder::default(),
            raw: JavaProperties::default(),
        };
        properties.raw = properties.to_java();
        properties
    }

    /// A table's properties with Sleeper's defaults for those not set.
    pub fn from_java(raw: JavaProperties) -> Result<Self> {
        Self::from_java_with_defaults(raw, &JavaProperties::default())
    }

    /// A table's properties as Sleeper's `TableProperties` reads them: a property not set falls
    /// back to the instance's `sleeper.default.table.*` value, then to Sleeper's default.
    pub fn from_java_with_defaults(raw: JavaProperties, instance: &JavaProperties) -> Result<Self> {
        let settings = Settings {
            table: &raw,
            instance,
        };
        let required = |key: &str| {
            raw.get(key)
                .map(str::to_owned)
                .ok_or_else(|| Error::Property {
                    property: key.to_owned(),
                    message: "is required".into(),
                })
        };
        let table_id = required(TABLE_ID)?;
        let schema = Schema::from_json(&required(SCHEMA)?).map_err(|e| Error::Property {
            property: SCHEMA.into(),
            message: format!("table {table_id}: {e}"),
        })?;
        let parquet = settings.parquet_options()?;
        let non_empty = |key: &str| {
            raw.get(key)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let key_order = match settings.get(DATA_ENGINE) {
            None => KeyOrder::default(),
            Some(engine) => KeyOrder::of_data_engine(&engine).ok_or_else(|| Error::Property {
                property: DATA_ENGINE.into(),
                message: format!(
                    "table {table_id}: {engine:?} is not a Sleeper data engine (java, datafusion, \
                     datafusion_experimental)"
                ),
            })?,
        };
        let properties = TableProperties {
            table_name: raw.get(TABLE_NAME).unwrap_or(&table_id).to_owned(),
            table_id,
            schema,
            parquet,
            filters: non_empty(FILTERS),
            aggregations: non_empty(AGGREGATIONS),
            key_order,
            raw,
        };
        properties.validate_parquet_settings()?;
        properties.compaction_rules()?;
        Ok(properties)
    }

    pub fn to_java(&self) -> JavaProperties {
        let mut raw = self.raw.clone();
        raw.set(TABLE_ID, &self.table_id);
        raw.set(TABLE_NAME, &self.table_name);
        raw.set(SCHEMA, self.schema.to_json());
        let p = &self.parquet;
        raw.set(ROW_GROUP_ROWS, p.row_group_rows.to_string());
        raw.set(PAGE_SIZE, p.page_size.to_string());
        raw.set(COMPRESSION, &p.compression);
        raw.set(WRITER_VERSION, &p.writer_version);
        raw.set(
            COLUMN_INDEX_TRUNCATE,
            p.column_index_truncate_length.to_string(),
        );
        raw.set(
            STATISTICS_TRUNCATE,
            p.statistics_truncate_length.to_string(),
        );
        raw.set(DICTIONARY_ROW_KEYS, p.dictionary_row_keys.to_string());
        raw.set(DICTIONARY_SORT_KEYS, p.dictionary_sort_keys.to_string());
        raw.set(DICTIONARY_VALUES, p.dictionary_values.to_string());
        if let Some(filters) = &self.filters {
            raw.set(FILTERS, filters);
        }
        if let Some(aggregations) = &self.aggregations {
            raw.set(AGGREGATIONS, aggregations);
        }
        raw.set(DATA_ENGINE, self.key_order.data_engine());
        raw
    }

    /// What Sleeper validates when it loads a table; a codec Sleeper allows but nothing here can
    /// write (`lzo`) only fails an export that would write it.
    fn validate_parquet_settings(&self) -> Result<()> {
        match self.writer_properties(&self.schema.arrow_schema()) {
            Err(Error::Property { property, .. })
                if property == COMPRESSION
                    && SLEEPER_CODECS.contains(&self.parquet.compression.as_str()) =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// The table's filters and aggregations, validated against its schema.
    pub fn compaction_rules(&self) -> Result<CompactionRules> {
        CompactionRules::parse(
            self.filters.as_deref(),
            self.aggregations.as_deref(),
            &self.schema,
        )
    }

    /// The Parquet writer settings Sleeper would use for a file of this table holding `columns`
    /// (all of the table's, or some of them), with the `sorting_columns` its rows are sorted by.
    pub fn writer_properties(&self, columns: &ArrowSchema) -> Result<WriterProperties> {
        let p = &self.parquet;
        let bad = |property: &str, message: String| Error::Property {
            property: property.into(),
            message,
        };
        let compression = match p.compression.as_str() {
            "uncompressed" => Compression::UNCOMPRESSED,
            "snappy" => Compression::SNAPPY,
            "gzip" => Compression::GZIP(GzipLevel::default()),
            "lz4" => Compression::LZ4_RAW,
            "brotli" => Compression::BROTLI(BrotliLevel::default()),
            "zstd" => Compression::ZSTD(ZstdLevel::default()),
            "lzo" => {
                return Err(bad(
                    COMPRESSION,
                    format!(
                        "table {} is compressed with lzo, which Sleeper allows but no Parquet \
                         writer here (nor Sleeper's DataFusion engine) can write; export it with \
                         another codec: `--compression zstd` (ExportOptions::compression, or \
                         COPY's 'format.compression')",
                        self.table_id
                    ),
                ))
            }
            other => {
                return Err(bad(
                    COMPRESSION,
                    format!(
                        "unsupported codec {other:?}; Sleeper's are {}",
                        SLEEPER_CODECS.join(", ")
                    ),
                ))
            }
        };
        let writer_version = match p.writer_version.as_str() {
            "v1" => WriterVersion::PARQUET_1_0,
            "v2" => WriterVersion::PARQUET_2_0,
            other => {
                return Err(bad(
                    WRITER_VERSION,
                    format!("{other:?} is neither v1 nor v2"),
                ))
            }
        };
        if p.row_group_rows == 0 {
            return Err(bad(ROW_GROUP_ROWS, "must be at least 1".into()));
        }
        let mut builder = WriterProperties::builder()
            .set_max_row_group_row_count(Some(p.row_group_rows))
            .set_data_page_size_limit(p.page_size)
            .set_compression(compression)
            .set_writer_version(writer_version)
            .set_column_index_truncate_length(Some(p.column_index_truncate_length))
            .set_statistics_truncate_length(Some(p.statistics_truncate_length))
            .set_created_by(format!("sleeper-export {}", env!("CARGO_PKG_VERSION")));
        let schema = &self.schema;
        for (fields, enabled) in [
            (&schema.row_key_fields, p.dictionary_row_keys),
            (&schema.sort_key_fields, p.dictionary_sort_keys),
            (&schema.value_fields, p.dictionary_values),
        ] {
            for field in fields {
                builder = builder
                    .set_column_dictionary_enabled(ColumnPath::from(field.name.as_str()), enabled);
            }
        }
        // Nested columns have leaf paths under the field name; dictionary settings for them follow
        // the writer default, as in Sleeper.
        Ok(builder
            .set_sorting_columns(Some(self.sorting_columns(columns)))
            .build())
    }

    /// The Parquet leaf columns a file's rows are sorted by, as Parquet orders values: the key
    /// columns in `columns`, in key order, up to the first one missing or one whose order in
    /// Parquet (unsigned bytes) is not the table's.
    fn sorting_columns(&self, columns: &ArrowSchema) -> Vec<SortingColumn> {
        let mut leaf_start = Vec::with_capacity(columns.fields().len());
        let mut leaves = 0;
        for field in columns.fields() {
            leaf_start.push(leaves);
            leaves += leaf_count(field.data_type());
        }
        let mut sorting = Vec::new();
        for key in self.schema.key_fields() {
            let Some(position) = columns.fields().iter().position(|f| f.name() == &key.name) else {
                break;
            };
            let agrees = key
                .field_type
                .primitive()
                .is_some_and(|t| self.key_order.agrees_with_arrow(t));
            if !agrees {
                break;
            }
            sorting.push(SortingColumn {
                column_idx: leaf_start[position] as i32,
                descending: false,
                nulls_first: false,
            });
        }
        sorting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_properties_need_an_id_and_a_valid_schema() {
        let error = TableProperties::from_java(JavaProperties::parse("sleeper.table.name=t\n"))
            .unwrap_err();
        assert!(error.to_string().contains("sleeper.table.id"), "{error}");
        let error = TableProperties::from_java(JavaProperties::parse(
            "sleeper.table.id=abc\nsleeper.table.schema={\"rowKeyFields\":[]}\n",
        ))
        .unwrap_err();
        assert!(
            error.to_string().contains("at least one row key"),
            "{error}"
        );
    }

    #[test]
    fn rejects_an_unknown_codec() {
        let text = "sleeper.table.id=abc\nsleeper.table.schema={\"rowKeyFields\":[{\"name\":\"k\",\"type\":\"LongType\"}]}\n\
                    sleeper.table.parquet.compression.codec=lzo2\n";
        let error = TableProperties::from_java(JavaProperties::parse(text)).unwrap_err();
        assert!(error.to_string().contains("lzo2"), "{error}");
    }

    const TABLE: &str = "sleeper.table.id=abc\nsleeper.table.schema={\"rowKeyFields\":[{\"name\":\"k\",\"type\":\"LongType\"}]}\n";

    #[test]
    fn unset_properties_fall_back_to_the_instance_then_to_sleeper() {
        let instance = JavaProperties::parse(
            "sleeper.default.table.parquet.rowgroup.rows.max=5000\n\
             sleeper.default.table.parquet.compression.codec=snappy\n\
             sleeper.default.table.data.engine=java\n",
        );
        let own = format!("{TABLE}sleeper.table.parquet.compression.codec=gzip\n");
        let table =
            TableProperties::from_java_with_defaults(JavaProperties::parse(&own), &instance)
                .unwrap();
        assert_eq!(table.parquet.row_group_rows, 5000);
        assert_eq!(table.parquet.compression, "gzip");
        assert_eq!(table.parquet.page_size, 131_072);
        assert_eq!(table.key_order, KeyOrder::Java);
        let alone = TableProperties::from_java(JavaProperties::parse(TABLE)).unwrap();
        assert_eq!(alone.parquet, ParquetOptions::default());
        assert_eq!(alone.key_order, KeyOrder::DataFusion);
        let engine = format!("{TABLE}sleeper.table.data.engine=DATAFUSION_EXPERIMENTAL\n");
        let experimental = TableProperties::from_java(JavaProperties::parse(&engine)).unwrap();
        assert_eq!(experimental.key_order, KeyOrder::DataFusion);
        let bad = format!("{TABLE}sleeper.table.data.engine=spark\n");
        let error = TableProperties::from_java(JavaProperties::parse(&bad)).unwrap_err();
        assert!(error.to_string().contains(DATA_ENGINE), "{error}");
    }

    #[test]
    fn an_lzo_table_opens_but_cannot_be_written_without_another_codec() {
        let text = format!("{TABLE}sleeper.table.parquet.compression.codec=LZO\n");
        let mut table = TableProperties::from_java(JavaProperties::parse(&text)).unwrap();
        let columns = table.schema.arrow_schema();
        let error = table.writer_properties(&columns).unwrap_err().to_string();
        assert!(
            error.contains(COMPRESSION) && error.contains("lzo") && error.contains("--compression"),
            "{error}"
        );
        table.parquet.compression = "zstd".into();
        table.writer_properties(&columns).unwrap();
    }

    #[test]
    fn files_record_the_key_columns_they_are_sorted_by_as_parquet_orders_them() {
        use crate::model::{Field, FieldType, PrimitiveType};
        let schema = Schema::new(
            vec![Field::primitive("k", PrimitiveType::String)],
            vec![Field::primitive("ts", PrimitiveType::Long)],
            vec![Field::new(
                "m",
                FieldType::Map {
                    key: PrimitiveType::String,
                    value: PrimitiveType::Long,
                },
            )],
        )
        .unwrap();
        let mut table = TableProperties::new("t", "t", schema.clone());
        let sorting = |table: &TableProperties, columns: &[&str]| -> Vec<i32> {
            let all = schema.arrow_schema();
            let fields: Vec<_> = columns
                .iter()
                .map(|c| all.field_with_name(c).unwrap().clone())
                .collect();
            table
                .writer_properties(&ArrowSchema::new(fields))
                .unwrap()
                .sorting_columns()
                .unwrap()
                .iter()
                .map(|c| c.column_idx)
                .collect()
        };
        assert_eq!(sorting(&table, &["k", "ts", "m"]), [0, 1]);
        // The map spreads over two leaf columns; a projection may put the keys anywhere.
        assert_eq!(sorting(&table, &["m", "ts", "k"]), [3, 2]);
        // Without the first key, the rows are sorted by nothing they hold.
        assert!(sorting(&table, &["ts", "m"]).is_empty());
        // Parquet orders strings by their bytes: not the Java engine's order.
        table.key_order = KeyOrder::Java;
        assert!(sorting(&table, &["k", "ts", "m"]).is_empty());
    }
}
