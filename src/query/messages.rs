//! Sleeper's bulk-export messages, byte-compatible with its JSON.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::model::{Region, Schema};

/// A request to export a whole table (Sleeper's first queue).
///
/// A field this crate does not know is an error, not ignored: Sleeper adds fields that narrow
/// an export (`sqlQuery` in July 2026), and exporting without one would export more than was
/// asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkExportQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
    /// SQL over each leaf's rows, which Sleeper's planner copies into every leaf query. The
    /// name is the one Sleeper's Python client sends (`python/src/sleeper/bulk_export.py`,
    /// `BulkExportQuery.to_json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_query: Option<String>,
}

/// Which table a [`BulkExportQuery`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSelector<'a> {
    Id(&'a str),
    Name(&'a str),
}

impl BulkExportQuery {
    /// A query for the table with this id, under this export id.
    pub fn of_table(table_id: impl Into<String>, export_id: impl Into<String>) -> Self {
        BulkExportQuery {
            table_id: Some(table_id.into()),
            export_id: Some(export_id.into()),
            ..BulkExportQuery::default()
        }
    }

    /// The same query with `sql` run over each leaf's rows.
    pub fn with_sql(self, sql: Option<String>) -> Self {
        BulkExportQuery {
            sql_query: sql,
            ..self
        }
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let query: BulkExportQuery = serde_json::from_str(json).map_err(|source| Error::Json {
            what: "bulk export query",
            source,
        })?;
        query.validate()?;
        Ok(query)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a query always serialises")
    }

    /// Sleeper's validation: exactly one of table id and table name.
    pub fn validate(&self) -> Result<TableSelector<'_>> {
        let export_id = self.export_id.as_deref();
        match (self.table_id.as_deref(), self.table_name.as_deref()) {
            (Some(id), None) => Ok(TableSelector::Id(id)),
            (None, Some(name)) => Ok(TableSelector::Name(name)),
            (None, None) => Err(Error::validation(
                export_id,
                "tableId or tableName field must be provided",
            )),
            (Some(_), Some(_)) => Err(Error::validation(
                export_id,
                "tableId or tableName field must be provided, not both",
            )),
        }
    }

    /// The export id, generated when the submitter left it out (as Sleeper does).
    pub fn with_export_id(mut self) -> Self {
        self.export_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
        self
    }
}

/// The export of one leaf partition (Sleeper's second queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkExportLeafPartitionQuery {
    pub table_id: String,
    pub export_id: String,
    pub sub_export_id: String,
    pub regions: Vec<Region>,
    pub leaf_partition_id: String,
    pub partition_region: Region,
    pub files: Vec<String>,
    /// Sleeper's SQL filter (July 2026): a query over the leaf's rows, registered as the view
    /// `query_results`, whose result is what the leaf exports.
    pub sql_query: Option<String>,
}

/// The leaf query's fields, in Sleeper's order (`BulkExportLeafPartitionQuerySerDe`).
const LEAF_QUERY_FIELDS: [&str; 8] = [
    "tableId",
    "exportId",
    "subExportId",
    "regions",
    "leafPartitionId",
    "partitionRegion",
    "files",
    "sqlQuery",
];

impl BulkExportLeafPartitionQuery {
    /// The table id, read before anything else so the caller can find the schema the regions need.
    pub fn table_id_of(json: &str) -> Result<String> {
        let value = parse(json)?;
        let export_id = value.get("exportId").and_then(Value::as_str);
        required_str(&value, "tableId", export_id)
    }

    /// Reads and validates a leaf query with Sleeper's messages. `schema_of` finds a table's schema
    /// by id; an unknown id is Sleeper's "Table could not be found" error.
    pub fn from_json(json: &str, schema_of: impl FnOnce(&str) -> Result<Schema>) -> Result<Self> {
        let value = parse(json)?;
        let export_id = value
            .get("exportId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let export_id_ref = export_id.as_deref();
        let table_id = required_str(&value, "tableId", export_id_ref)?;
        let export_id = required_str(&value, "exportId", export_id_ref)?;
        let sub_export_id = required_str(&value, "subExportId", Some(&export_id))?;
        let regions = required(&value, "regions", Some(&export_id))?;
        let leaf_partition_id = required_str(&value, "leafPartitionId", Some(&export_id))?;
        let partition_region = required(&value, "partitionRegion", Some(&export_id))?;
        let files = required(&value, "files", Some(&export_id))?;
        let sql_query = match value.get("sqlQuery") {
            None | Some(Value::Null) => None,
            Some(Value::String(sql)) => Some(sql.clone()),
            Some(_) => {
                return Err(Error::validation(
                    Some(&export_id),
                    "sqlQuery field must be a string",
                ))
            }
        };
        if let Some(unknown) = value
            .as_object()
            .expect("parse checks for an object")
            .keys()
            .find(|field| !LEAF_QUERY_FIELDS.contains(&field.as_str()))
        {
            return Err(Error::validation(
                Some(&export_id),
                format!(
                    "unknown field {unknown:?}: what it asks for is not known here, so nothing \
                     is exported rather than more than was asked (known fields: {})",
                    LEAF_QUERY_FIELDS.join(", ")
                ),
            ));
        }
        let schema = schema_of(&table_id)?;
        let regions = regions
            .as_array()
            .ok_or_else(|| Error::validation(Some(&export_id), "regions field must be an array"))?
            .iter()
            .map(|region| Region::from_json(region, &schema))
            .collect::<Result<Vec<_>>>()?;
        let files = files
            .as_array()
            .and_then(|files| {
                files
                    .iter()
                    .map(|f| f.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                Error::validation(Some(&export_id), "files field must be an array of strings")
            })?;
        Ok(BulkExportLeafPartitionQuery {
            table_id,
            sub_export_id,
            regions,
            leaf_partition_id,
            partition_region: Region::from_json(partition_region, &schema)?,
            files,
            export_id,
            sql_query,
        })
    }

    /// Sleeper's field order; `pretty` gives the layout of Sleeper's approved test files.
    pub fn to_json(&self, schema: &Schema, pretty: bool) -> String {
        let mut object = Map::new();
        object.insert("tableId".into(), json!(self.table_id));
        object.insert("exportId".into(), json!(self.export_id));
        object.insert("subExportId".into(), json!(self.sub_export_id));
        object.insert(
            "regions".into(),
            Value::Array(self.regions.iter().map(|r| r.to_json(schema)).collect()),
        );
        object.insert("leafPartitionId".into(), json!(self.leaf_partition_id));
        object.insert(
            "partitionRegion".into(),
            self.partition_region.to_json(schema),
        );
        object.insert("files".into(), json!(self.files));
        if let Some(sql) = &self.sql_query {
            object.insert("sqlQuery".into(), json!(sql));
        }
        let value = Value::Object(object);
        if pretty {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        }
        .expect("a JSON value always serialises")
    }
}

fn parse(json: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(json).map_err(|source| Error::Json {
        what: "bulk export leaf partition query",
        source,
    })?;
    if !value.is_object() {
        return Err(Error::validation(
            None,
            format!("expected a JSON object, found {value}"),
        ));
    }
    Ok(value)
}

fn required<'a>(value: &'a Value, field: &str, export_id: Option<&str>) -> Result<&'a Value> {
    match value.get(field) {
        None | Some(Value::Null) => Err(Error::validation(
            export_id,
            format!("{field} field must be provided"),
        )),
        Some(present) => Ok(present),
    }
}

fn required_str(value: &Value, field: &str, export_id: Option<&str>) -> Result<String> {
    required(value, field, export_id)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::validation(export_id, format!("{field} field must be a string")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_validation_uses_sleepers_wording() {
        let neither = BulkExportQuery::from_json(r#"{"exportId":"e1"}"#).unwrap_err();
        assert_eq!(
            neither.to_string(),
            r#"Query validation failed for export "e1": tableId or tableName field must be provided"#
        );
        let both = BulkExportQuery::from_json(r#"{"tableId":"a","tableName":"b"}"#).unwrap_err();
        assert_eq!(
            both.to_string(),
            "Query validation failed: tableId or tableName field must be provided, not both"
        );
    }

    #[test]
    fn export_id_is_generated_when_absent() {
        let query = BulkExportQuery::from_json(r#"{"tableName":"test-table"}"#)
            .unwrap()
            .with_export_id();
        assert_eq!(query.validate().unwrap(), TableSelector::Name("test-table"));
        assert!(uuid::Uuid::parse_str(query.export_id.as_deref().unwrap()).is_ok());
        let kept = BulkExportQuery::from_json(r#"{"exportId":"e1","tableName":"t"}"#)
            .unwrap()
            .with_export_id();
        assert_eq!(kept.export_id.as_deref(), Some("e1"));
        assert_eq!(kept.to_json(), r#"{"tableName":"t","exportId":"e1"}"#);
    }

    #[test]
    fn a_query_carries_sleepers_sql_field_and_refuses_fields_it_does_not_know() {
        // The body Sleeper's Python client sends (bulk_export.py: exportId, tableName, sqlQuery).
        let body =
            r#"{"exportId": "e1", "tableName": "t", "sqlQuery": "SELECT * FROM query_results"}"#;
        let query = BulkExportQuery::from_json(body).unwrap();
        assert_eq!(
            query.sql_query.as_deref(),
            Some("SELECT * FROM query_results")
        );
        assert_eq!(BulkExportQuery::from_json(&query.to_json()).unwrap(), query);
        let error = BulkExportQuery::from_json(r#"{"tableName": "t", "rowFilter": "x > 1"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `rowFilter`"), "{error}");
    }
}
