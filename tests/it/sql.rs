//! SQL over Sleeper tables: the sqllogictest files under `tests/sql/`, and a `COPY` against
//! `sleeper-export export` on the same table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{SessionConfig, SessionContext};
use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::model::PartitionTree;
use sleeper_export::model::{Field, KeyOrder, KeyValue, PrimitiveType, Schema, TableProperties};
use sleeper_export::plan::sink::WrittenLeaf;
use sleeper_export::sql::{sleeper_session, SleeperSessionExt};
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::common::{local, read_parquet, runtime};

/// A session as the `sql` command has, for the sqllogictest runner.
struct SleeperDb {
    ctx: SessionContext,
    /// The test's directory, shown as `<dir>` in results so that they do not depend on it.
    dir: String,
}

#[async_trait]
impl sqllogictest::AsyncDB for SleeperDb {
    type Error = sleeper_export::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Self::Error> {
        let frame = self.ctx.sleeper_sql(sql).await?;
        let batches = frame
            .collect()
            .await
            .map_err(sleeper_export::Error::DataFusion)?;
        let Some(first) = batches.first() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        // An export's result is its files, one row each: a statement that wrote that many.
        if first.schema() == WrittenLeaf::schema() {
            let files = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
            return Ok(DBOutput::StatementComplete(files as u64));
        }
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(self.rows_of(batch));
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; first.num_columns()],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

impl SleeperDb {
    /// A row per line: a cell of several lines (a plan) continues on the following rows.
    fn rows_of(&self, batch: &RecordBatch) -> Vec<Vec<String>> {
        let options = FormatOptions::default().with_null("NULL");
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &options).unwrap())
            .collect();
        let mut rows = Vec::new();
        for row in 0..batch.num_rows() {
            let cells: Vec<Vec<String>> = formatters
                .iter()
                .map(|formatter| {
                    let text = formatter.value(row).to_string().replace(&self.dir, "<dir>");
                    text.lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            let height = cells.iter().map(Vec::len).max().unwrap_or(0).max(1);
            for line in 0..height {
                rows.push(
                    cells
                        .iter()
                        .filter_map(|cell| cell.get(line).cloned())
                        .collect(),
                );
            }
        }
        rows
    }
}

fn long_int_schema() -> Schema {
    Schema::new(
        vec![Field::primitive("id", PrimitiveType::Long)],
        vec![],
        vec![
            Field::primitive("name", PrimitiveType::String),
            Field::primitive("amount", PrimitiveType::Long),
        ],
    )
    .unwrap()
}

/// `numbers`: ids 0..1000 once each (name `n0042`, amount ten times the id) in four leaves split
/// at 250, 500 and 750. The even ids sit in one file still on the root, the ids 1 mod 4 below
/// 500 in one file referenced by both leaves of the left half (as after a split), and the other
/// odd ids in each leaf's own file.
async fn write_numbers(location: &Path) -> SleeperTable {
    let schema = long_int_schema();
    let splits = [250, 500, 750].map(KeyValue::Long);
    let tree = PartitionTree::from_split_points("numbers", &schema, &splits).unwrap();
    let properties = TableProperties::new("numbers", "numbers", schema.clone());
    let arrow_schema = schema.arrow_schema();
    let batch = |ids: Vec<i64>| {
        RecordBatch::try_new(
            Arc::clone(&arrow_schema),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|id| format!("n{id:04}")),
                )),
                Arc::new(Int64Array::from_iter_values(ids.iter().map(|id| id * 10))),
            ],
        )
        .unwrap()
    };
    let root = tree.root().id.clone();
    let leaves: Vec<String> = tree.leaves().into_iter().map(|l| l.id.clone()).collect();
    let left_half = tree.ancestors(&leaves[0])[0].id.clone();
    let mut writer = TableWriter::new(local(location), properties, tree, RowStyle::default(), 1);
    let ids = |filter: &dyn Fn(i64) -> bool| (0..1000).filter(|&id| filter(id)).collect::<Vec<_>>();
    writer
        .write_file(&root, vec![batch(ids(&|id| id % 2 == 0))], &[&root])
        .await
        .unwrap();
    writer
        .write_file(
            &left_half,
            vec![batch(ids(&|id| id % 4 == 1 && id < 500))],
            &[&leaves[0], &leaves[1]],
        )
        .await
        .unwrap();
    for (index, leaf) in leaves.iter().enumerate() {
        let (low, high) = (index as i64 * 250, index as i64 * 250 + 250);
        let own = ids(&|id| id % 2 == 1 && (id % 4 == 3 || id >= 500) && id >= low && id < high);
        writer
            .write_file(leaf, vec![batch(own)], &[leaf.as_str()])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap()
}

/// `words` (Java engine) and `utf8_words` (DataFusion engine): string keys split at "m", with
/// characters on both sides of the one place where the engines' orders disagree (U+FF21
/// against U+1F600); SQL's order is the DataFusion engine's.
async fn write_words(location: &Path, table_id: &str, order: KeyOrder) -> SleeperTable {
    let schema = Schema::new(
        vec![Field::primitive("word", PrimitiveType::String)],
        vec![],
        vec![Field::primitive("n", PrimitiveType::Long)],
    )
    .unwrap();
    let tree = PartitionTree::from_split_points(table_id, &schema, &[KeyValue::String("m".into())])
        .unwrap();
    let mut properties = TableProperties::new(table_id, table_id, schema.clone());
    properties.key_order = order;
    let arrow_schema = schema.arrow_schema();
    let leaves: Vec<String> = tree.leaves().into_iter().map(|l| l.id.clone()).collect();
    let mut writer = TableWriter::new(local(location), properties, tree, RowStyle::default(), 1);
    // Each file in the table's order: for Java, U+1F600 (a surrogate pair in UTF-16) first.
    let mut right = vec!["mango", "orange", "\u{1f600}y", "\u{ff21}x"];
    right.sort_by(|a, b| order.compare_strings(a, b));
    let files = [
        (&leaves[0], vec!["apple", "banana", "kiwi", "lemon"]),
        (&leaves[1], right),
    ];
    let mut n = 0;
    for (leaf, words) in files {
        let counts: Vec<i64> = words
            .iter()
            .map(|_| {
                n += 1;
                n
            })
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&arrow_schema),
            vec![
                Arc::new(StringArray::from(words)),
                Arc::new(Int64Array::from(counts)),
            ],
        )
        .unwrap();
        writer
            .write_file(leaf, vec![batch], &[leaf.as_str()])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap()
}

#[test]
fn sql_logic_tests() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        write_numbers(&dir.path().join("numbers")).await;
        write_words(&dir.path().join("words"), "words", KeyOrder::Java).await;
        write_words(
            &dir.path().join("utf8_words"),
            "utf8_words",
            KeyOrder::DataFusion,
        )
        .await;
        std::fs::write(dir.path().join("not-a-directory"), "a file").unwrap();
        let dir_text = dir.path().to_str().unwrap().to_owned();
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
        let mut files: Vec<_> = std::fs::read_dir(&scripts)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "slt"))
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "no .slt files under {}",
            scripts.display()
        );
        for file in files {
            let session_dir = dir_text.clone();
            let mut runner = sqllogictest::Runner::new(move || {
                let dir = session_dir.clone();
                async move {
                    let ctx = sleeper_session(Stores::default(), SessionConfig::new())?;
                    Ok(SleeperDb { ctx, dir })
                }
            });
            runner.set_var("DIR".into(), dir_text.clone());
            runner
                .run_file_async(&file)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    });
}

/// `COPY t TO` and `sleeper-export export` write the same rows to each leaf's file.
#[test]
fn copy_of_a_table_writes_what_export_writes() {
    runtime().block_on(async {
        for seed in [3, 17] {
            let random = crate::common::random_table(seed).await;
            let table = &random.table;
            let out = tempfile::tempdir().unwrap();
            let exported = export_table(
                table,
                &local(&out.path().join("export")),
                &ExportOptions::default(),
                |_| {},
            )
            .await
            .unwrap();
            let ctx = sleeper_session(Stores::default(), SessionConfig::new()).unwrap();
            ctx.register_sleeper_table("t", table.location.url.as_str())
                .await
                .unwrap();
            let copy_dir = out.path().join("copy");
            let summary = ctx
                .sleeper_sql(&format!("COPY t TO '{}'", copy_dir.display()))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut copied: HashMap<String, String> = HashMap::new();
            for batch in &summary {
                let leaves = batch.column(0).as_string::<i32>();
                let files = batch.column(2).as_string::<i32>();
                for row in 0..batch.num_rows() {
                    copied.insert(leaves.value(row).to_owned(), files.value(row).to_owned());
                }
            }
            assert_eq!(
                copied.len(),
                exported.leaves.len(),
                "seed {seed}: one file per leaf"
            );
            for leaf in &exported.leaves {
                let copy = &copied[&leaf.leaf_partition_id];
                assert_eq!(
                    read_parquet(copy),
                    read_parquet(&leaf.file),
                    "seed {seed}, leaf {}",
                    leaf.leaf_partition_id
                );
            }
        }
    });
}

/// Predicates on the first row key, translated into regions or not, keep exactly the rows that
/// DataFusion keeps when it filters the same rows itself, with no pruning.
#[test]
fn key_predicates_keep_what_datafusion_keeps_without_pruning() {
    use datafusion::common::ScalarValue;
    use datafusion::datasource::MemTable;
    use datafusion::logical_expr::{col, lit, Expr};

    runtime().block_on(async {
        let mut translated = 0;
        for seed in 0..10 {
            let random = crate::common::random_table(seed).await;
            let table = &random.table;
            let ctx = sleeper_session(Stores::default(), SessionConfig::new()).unwrap();
            ctx.register_sleeper_table("t", table.location.url.as_str())
                .await
                .unwrap();
            let rows = ctx.table("t").await.unwrap().collect().await.unwrap();
            let schema = rows.first().map_or_else(
                || Arc::new(table.properties.schema.arrow_schema().as_ref().clone()),
                |b| b.schema(),
            );
            ctx.register_table(
                "m",
                Arc::new(MemTable::try_new(schema, vec![rows.clone()]).unwrap()),
            )
            .unwrap();
            let key = table.properties.schema.row_key_fields[0].name.clone();
            let mut values: Vec<ScalarValue> = rows
                .iter()
                .flat_map(|batch| {
                    let column = batch.column_by_name(&key).unwrap().clone();
                    (0..batch.num_rows())
                        .step_by(7)
                        .map(move |row| ScalarValue::try_from_array(&column, row).unwrap())
                })
                .take(4)
                .collect();
            if let Some(first) = values.first() {
                // Bounds on both sides of where SQL's string order and Sleeper's disagree.
                if matches!(first, ScalarValue::Utf8(_)) {
                    values.push(ScalarValue::Utf8(Some("\u{ff21}".into())));
                    values.push(ScalarValue::Utf8(Some("\u{10000}".into())));
                    values.push(ScalarValue::Utf8(Some("m".into())));
                }
            }
            for a in &values {
                for b in &values {
                    let k = || col(key.as_str());
                    let predicates: Vec<Expr> = vec![
                        k().gt_eq(lit(a.clone())),
                        k().lt(lit(b.clone())),
                        k().eq(lit(a.clone())),
                        k().gt(lit(a.clone())).and(k().lt_eq(lit(b.clone()))),
                        k().in_list(vec![lit(a.clone()), lit(b.clone())], false),
                    ];
                    for predicate in predicates {
                        let select = |name: &'static str, predicate: Expr| {
                            let ctx = ctx.clone();
                            let key = key.clone();
                            async move {
                                let frame =
                                    ctx.table(name).await.unwrap().filter(predicate).unwrap();
                                let plan = format!(
                                    "{:?}",
                                    frame.clone().create_physical_plan().await.unwrap()
                                );
                                let batches = frame
                                    .select_columns(&[key.as_str()])
                                    .unwrap()
                                    .sort(vec![col(key.as_str()).sort(true, true)])
                                    .unwrap()
                                    .collect()
                                    .await
                                    .unwrap();
                                (batches, plan)
                            }
                        };
                        let (ours, plan) = select("t", predicate.clone()).await;
                        let (expected, _) = select("m", predicate.clone()).await;
                        if !plan.contains("FilterExec") {
                            translated += 1;
                        }
                        let flat = |batches: Vec<RecordBatch>| {
                            batches
                                .iter()
                                .flat_map(|b| {
                                    let column = b.column(0).clone();
                                    (0..b.num_rows()).map(move |row| {
                                        ScalarValue::try_from_array(&column, row).unwrap()
                                    })
                                })
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(flat(ours), flat(expected), "seed {seed}: {predicate}");
                    }
                }
            }
        }
        // Most predicates became regions: the pruning path is the one under test.
        assert!(
            translated > 100,
            "only {translated} predicates were translated"
        );
    });
}

/// COPY options set the Parquet writer: codec and row-group size here.
#[test]
fn copy_options_set_the_parquet_writer() {
    use datafusion::parquet::basic::Compression;
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let table = write_numbers(&dir.path().join("numbers")).await;
        // A codec Sleeper allows and nothing here writes: the table opens, a COPY needs another.
        let mut lzo = (*table.properties).clone();
        lzo.parquet.compression = "lzo".into();
        SleeperTable::write_properties(&table.location, &lzo)
            .await
            .unwrap();
        let ctx = sleeper_session(Stores::default(), SessionConfig::new()).unwrap();
        ctx.register_sleeper_table("numbers", dir.path().join("numbers").to_str().unwrap())
            .await
            .unwrap();
        let refused = ctx
            .sleeper_sql(&format!(
                "COPY numbers TO '{}'",
                dir.path().join("refused").display()
            ))
            .await
            .unwrap()
            .collect()
            .await
            .expect_err("an lzo table is not written without another codec")
            .to_string();
        assert!(
            refused.contains("sleeper.table.parquet.compression.codec")
                && refused.contains("format.compression"),
            "{refused}"
        );
        assert!(!dir.path().join("refused").exists());
        let summary = ctx
            .sleeper_sql(&format!(
                "COPY numbers TO '{}' OPTIONS ('format.compression' 'snappy', \
                 'format.max_row_group_size' '64')",
                dir.path().join("out").display()
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let files = summary[0].column(2).as_string::<i32>();
        for row in 0..summary[0].num_rows() {
            let path = files.value(row).strip_prefix("file://").unwrap();
            let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
            let metadata = reader.metadata();
            assert!(metadata.num_row_groups() >= 4, "250 rows in groups of 64");
            for group in metadata.row_groups() {
                assert!(group.num_rows() <= 64);
                assert_eq!(group.column(0).compression(), Compression::SNAPPY);
            }
        }
    });
}
