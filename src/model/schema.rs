//! Sleeper's table schema, its JSON form, and the Arrow types its columns are stored as.

use std::sync::Arc;

use datafusion::arrow::datatypes::{
    DataType, Field as ArrowField, Fields, Schema as ArrowSchema, SchemaRef,
};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Parquet leaf columns under an Arrow field: the column chunks its values are spread over.
pub fn leaf_count(data_type: &DataType) -> usize {
    match data_type {
        DataType::Map(entries, _) => leaf_count(entries.data_type()),
        DataType::Struct(fields) => fields.iter().map(|f| leaf_count(f.data_type())).sum(),
        DataType::List(item) | DataType::LargeList(item) => leaf_count(item.data_type()),
        _ => 1,
    }
}

/// The types Sleeper allows for keys and inside maps and lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrimitiveType {
    Int,
    Long,
    String,
    ByteArray,
}

impl PrimitiveType {
    fn json_name(self) -> &'static str {
        match self {
            PrimitiveType::Int => "IntType",
            PrimitiveType::Long => "LongType",
            PrimitiveType::String => "StringType",
            PrimitiveType::ByteArray => "ByteArrayType",
        }
    }

    fn from_json_name(name: &str) -> Option<Self> {
        Some(match name {
            "IntType" => PrimitiveType::Int,
            "LongType" => PrimitiveType::Long,
            "StringType" => PrimitiveType::String,
            "ByteArrayType" => PrimitiveType::ByteArray,
            _ => return None,
        })
    }

    pub fn from_arrow(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Int32 => PrimitiveType::Int,
            DataType::Int64 => PrimitiveType::Long,
            DataType::Utf8 => PrimitiveType::String,
            DataType::Binary => PrimitiveType::ByteArray,
            _ => return None,
        })
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            PrimitiveType::Int => DataType::Int32,
            PrimitiveType::Long => DataType::Int64,
            PrimitiveType::String => DataType::Utf8,
            PrimitiveType::ByteArray => DataType::Binary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldType {
    Primitive(PrimitiveType),
    Map {
        key: PrimitiveType,
        value: PrimitiveType,
    },
    List {
        element: PrimitiveType,
    },
}

impl FieldType {
    pub fn primitive(&self) -> Option<PrimitiveType> {
        match self {
            FieldType::Primitive(p) => Some(*p),
            _ => None,
        }
    }

    /// Map entries and list elements use the Parquet names (`key_value`/`key`/`value`, `element`)
    /// that Sleeper's writers use, so our files read back with the same Arrow types. Map values
    /// and list elements are declared nullable, as Sleeper's DataFusion compaction writes them
    /// (`optional` in its files; Sleeper's Java writer makes them `required`, which reads as
    /// nullable without loss, where the reverse would need every value checked).
    pub fn arrow_type(&self) -> DataType {
        match self {
            FieldType::Primitive(p) => p.arrow_type(),
            FieldType::Map { key, value } => DataType::Map(
                Arc::new(ArrowField::new(
                    "key_value",
                    DataType::Struct(Fields::from(vec![
                        ArrowField::new("key", key.arrow_type(), false),
                        ArrowField::new("value", value.arrow_type(), true),
                    ])),
                    false,
                )),
                false,
            ),
            FieldType::List { element } => DataType::List(Arc::new(ArrowField::new(
                "element",
                element.arrow_type(),
                true,
            ))),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            FieldType::Primitive(p) => json!(p.json_name()),
            FieldType::Map { key, value } => {
                json!({"MapType": {"keyType": key.json_name(), "valueType": value.json_name()}})
            }
            FieldType::List { element } => {
                json!({"ListType": {"elementType": element.json_name()}})
            }
        }
    }

    fn from_json(value: &Value) -> std::result::Result<Self, String> {
        let primitive = |v: &Value| {
            v.as_str()
                .and_then(PrimitiveType::from_json_name)
                .ok_or_else(|| format!("unknown primitive type {v}"))
        };
        if let Some(name) = value.as_str() {
            return primitive(value)
                .map(FieldType::Primitive)
                .map_err(|_| format!("unknown type {name:?}"));
        }
        if let Some(map) = value.get("MapType") {
            return Ok(FieldType::Map {
                key: primitive(&map["keyType"])?,
                value: primitive(&map["valueType"])?,
            });
        }
        if let Some(list) = value.get("ListType") {
            return Ok(FieldType::List {
                element: primitive(&list["elementType"])?,
            });
        }
        Err(format!("unknown type {value}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub field_type: FieldType,
    pub nullable: bool,
}

impl Field {
    pub fn new(name: impl Into<String>, field_type: FieldType) -> Self {
        Field {
            name: name.into(),
            field_type,
            nullable: false,
        }
    }

    pub fn primitive(name: impl Into<String>, primitive: PrimitiveType) -> Self {
        Field::new(name, FieldType::Primitive(primitive))
    }

    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }

    pub fn arrow_field(&self) -> ArrowField {
        ArrowField::new(&self.name, self.field_type.arrow_type(), self.nullable)
    }
}

impl Serialize for Field {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut object = serde_json::Map::new();
        object.insert("name".into(), json!(self.name));
        object.insert("type".into(), self.field_type.to_json());
        if self.nullable {
            object.insert("nullable".into(), json!(true));
        }
        object.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let name = value["name"]
            .as_str()
            .ok_or_else(|| D::Error::custom(format!("field without a name: {value}")))?;
        let field_type = FieldType::from_json(&value["type"])
            .map_err(|e| D::Error::custom(format!("field {name:?}: {e}")))?;
        Ok(Field {
            name: name.to_owned(),
            field_type,
            nullable: value["nullable"].as_bool().unwrap_or(false),
        })
    }
}

/// A Sleeper schema: rows are ordered by the row keys, then the sort keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    pub row_key_fields: Vec<Field>,
    #[serde(default)]
    pub sort_key_fields: Vec<Field>,
    #[serde(default)]
    pub value_fields: Vec<Field>,
}

impl Schema {
    pub fn new(
        row_key_fields: Vec<Field>,
        sort_key_fields: Vec<Field>,
        value_fields: Vec<Field>,
    ) -> Result<Self> {
        let schema = Schema {
            row_key_fields,
            sort_key_fields,
            value_fields,
        };
        schema.validate()?;
        Ok(schema)
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let schema: Schema = serde_json::from_str(json).map_err(|source| Error::Json {
            what: "schema",
            source,
        })?;
        schema.validate()?;
        Ok(schema)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a schema always serialises")
    }

    fn validate(&self) -> Result<()> {
        if self.row_key_fields.is_empty() {
            return Err(Error::Schema(
                "at least one row key field is required".into(),
            ));
        }
        for key in self.key_fields() {
            if key.field_type.primitive().is_none() {
                return Err(Error::Schema(format!(
                    "key field {:?} must be Int, Long, String or ByteArray, not a map or list",
                    key.name
                )));
            }
            if key.nullable {
                return Err(Error::Schema(format!(
                    "key field {:?} cannot be nullable",
                    key.name
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for field in self.all_fields() {
            if !names.insert(field.name.as_str()) {
                return Err(Error::Schema(format!(
                    "field name {:?} appears twice",
                    field.name
                )));
            }
        }
        Ok(())
    }

    /// Row keys then sort keys: the columns that define the order of rows.
    pub fn key_fields(&self) -> impl Iterator<Item = &Field> {
        self.row_key_fields.iter().chain(&self.sort_key_fields)
    }

    pub fn all_fields(&self) -> impl Iterator<Item = &Field> {
        self.key_fields().chain(&self.value_fields)
    }

    pub fn row_key_types(&self) -> Vec<PrimitiveType> {
        self.row_key_fields
            .iter()
            .map(|f| {
                f.field_type
                    .primitive()
                    .expect("validated: keys are primitive")
            })
            .collect()
    }

    pub fn key_types(&self) -> Vec<PrimitiveType> {
        self.key_fields()
            .map(|f| {
                f.field_type
                    .primitive()
                    .expect("validated: keys are primitive")
            })
            .collect()
    }

    pub fn row_key_index(&self, name: &str) -> Option<usize> {
        self.row_key_fields.iter().position(|f| f.name == name)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.all_fields().find(|f| f.name == name)
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(ArrowSchema::new(
            self.all_fields()
                .map(Field::arrow_field)
                .collect::<Vec<_>>(),
        ))
    }
}
