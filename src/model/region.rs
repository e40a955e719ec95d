//! Ranges and regions of keys (compared in a table's [`KeyOrder`]), and Sleeper's Region JSON.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{json, Map, Value};

use super::key::KeyValue;
use super::order::KeyOrder;
use super::schema::{PrimitiveType, Schema};
use crate::error::{Error, Result};

/// A range of one row key. `max: None` is +infinity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Range {
    pub min: KeyValue,
    pub min_inclusive: bool,
    pub max: Option<KeyValue>,
    pub max_inclusive: bool,
}

impl Range {
    /// A partition range: min inclusive, max exclusive.
    pub fn partition(min: KeyValue, max: Option<KeyValue>) -> Self {
        Range {
            min,
            min_inclusive: true,
            max,
            max_inclusive: false,
        }
    }

    pub fn everything(key_type: PrimitiveType) -> Self {
        Range::partition(KeyValue::minimum(key_type), None)
    }

    pub fn contains(&self, value: &KeyValue, order: KeyOrder) -> bool {
        let above_min = match order.compare(value, &self.min) {
            Ordering::Greater => true,
            Ordering::Equal => self.min_inclusive,
            Ordering::Less => false,
        };
        above_min && self.below_max(value, order)
    }

    pub fn below_max(&self, value: &KeyValue, order: KeyOrder) -> bool {
        match &self.max {
            None => true,
            Some(max) => match order.compare(value, max) {
                Ordering::Less => true,
                Ordering::Equal => self.max_inclusive,
                Ordering::Greater => false,
            },
        }
    }

    /// Whether some value in the closed interval `[low, high]` may be in the range.
    pub fn overlaps(&self, low: &KeyValue, high: &KeyValue, order: KeyOrder) -> bool {
        let high_reaches_min = match order.compare(high, &self.min) {
            Ordering::Greater => true,
            Ordering::Equal => self.min_inclusive,
            Ordering::Less => false,
        };
        high_reaches_min && self.below_max(low, order)
    }

    /// The values in both ranges; `None` when there are none.
    pub fn intersect(&self, other: &Range, order: KeyOrder) -> Option<Range> {
        let (min, min_inclusive) = match order.compare(&self.min, &other.min) {
            Ordering::Greater => (&self.min, self.min_inclusive),
            Ordering::Less => (&other.min, other.min_inclusive),
            Ordering::Equal => (&self.min, self.min_inclusive && other.min_inclusive),
        };
        let (max, max_inclusive) = match (&self.max, &other.max) {
            (None, None) => (None, false),
            (Some(max), None) => (Some(max), self.max_inclusive),
            (None, Some(max)) => (Some(max), other.max_inclusive),
            (Some(a), Some(b)) => match order.compare(a, b) {
                Ordering::Less => (Some(a), self.max_inclusive),
                Ordering::Greater => (Some(b), other.max_inclusive),
                Ordering::Equal => (Some(a), self.max_inclusive && other.max_inclusive),
            },
        };
        let range = Range {
            min: min.clone(),
            min_inclusive,
            max: max.cloned(),
            max_inclusive,
        };
        (!range.is_empty(order)).then_some(range)
    }

    /// Whether the range admits no value at all (min above max, or an empty half-open range).
    pub fn is_empty(&self, order: KeyOrder) -> bool {
        match &self.max {
            None => false,
            Some(max) => match order.compare(&self.min, max) {
                Ordering::Less => false,
                Ordering::Equal => !(self.min_inclusive && self.max_inclusive),
                Ordering::Greater => true,
            },
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open = if self.min_inclusive { '[' } else { '(' };
        let close = if self.max_inclusive { ']' } else { ')' };
        match &self.max {
            Some(max) => write!(f, "{open}{}, {max}{close}", self.min),
            None => write!(f, "{open}{}, +inf)", self.min),
        }
    }
}

/// One range per row key, in the schema's row-key order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Region {
    pub ranges: Vec<Range>,
}

impl Region {
    pub fn everything(schema: &Schema) -> Self {
        Region {
            ranges: schema
                .row_key_types()
                .into_iter()
                .map(Range::everything)
                .collect(),
        }
    }

    /// The rows in both regions; `None` when there are none.
    pub fn intersect(&self, other: &Region, order: KeyOrder) -> Option<Region> {
        let ranges = self
            .ranges
            .iter()
            .zip(&other.ranges)
            .map(|(a, b)| a.intersect(b, order))
            .collect::<Option<Vec<Range>>>()?;
        Some(Region { ranges })
    }

    pub fn contains(&self, row_key: &[KeyValue], order: KeyOrder) -> bool {
        self.ranges
            .iter()
            .zip(row_key)
            .all(|(range, value)| range.contains(value, order))
    }

    /// Region JSON as Sleeper writes it: strings Base64, unbounded max left out.
    pub fn to_json(&self, schema: &Schema) -> Value {
        let mut object = Map::new();
        for (field, range) in schema.row_key_fields.iter().zip(&self.ranges) {
            let mut entry = Map::new();
            entry.insert("min".into(), range.min.to_json(true));
            entry.insert("minInclusive".into(), json!(range.min_inclusive));
            if let Some(max) = &range.max {
                entry.insert("max".into(), max.to_json(true));
            }
            entry.insert("maxInclusive".into(), json!(range.max_inclusive));
            object.insert(field.name.clone(), Value::Object(entry));
        }
        object.insert("stringsBase64Encoded".into(), json!(true));
        Value::Object(object)
    }

    /// Reads Region JSON with Sleeper's defaults: `minInclusive` true, `maxInclusive` false,
    /// an absent or null `max` unbounded, strings Base64 unless `stringsBase64Encoded` is false.
    /// Row keys the JSON leaves out cover their whole range.
    pub fn from_json(value: &Value, schema: &Schema) -> Result<Self> {
        let object = value
            .as_object()
            .ok_or_else(|| Error::Region(format!("expected a JSON object, found {value}")))?;
        let strings_base64 = match object.get("stringsBase64Encoded") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(flag)) => *flag,
            Some(other) => {
                return Err(Error::Region(format!(
                    "stringsBase64Encoded must be true or false, found {other}"
                )))
            }
        };
        let mut region = Region::everything(schema);
        for (name, entry) in object {
            if name == "stringsBase64Encoded" {
                continue;
            }
            let index = schema.row_key_index(name).ok_or_else(|| {
                Error::Region(format!(
                    "Key \"{name}\" was not a row key field in the table schema"
                ))
            })?;
            let key_type = schema.row_key_types()[index];
            let read = |value: &Value| {
                KeyValue::from_json(key_type, value, strings_base64)
                    .map_err(|e| Error::Region(format!("key {name:?}: {e}")))
            };
            let range = entry.as_object().ok_or_else(|| {
                Error::Region(format!(
                    "key {name:?}: expected a range object, found {entry}"
                ))
            })?;
            if let Some(unknown) = range
                .keys()
                .find(|field| !RANGE_FIELDS.contains(&field.as_str()))
            {
                // A range field this crate does not know could narrow the range: exporting
                // without it would export more than was asked.
                return Err(Error::Region(format!(
                    "key {name:?}: unknown range field {unknown:?} (known: {})",
                    RANGE_FIELDS.join(", ")
                )));
            }
            let flag = |field: &str, default: bool| match entry.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(Error::Region(format!(
                    "key {name:?}: {field} must be a boolean, found {other}"
                ))),
            };
            let min = match entry.get("min") {
                None | Some(Value::Null) => KeyValue::minimum(key_type),
                Some(min) => read(min)?,
            };
            let max = match entry.get("max") {
                None | Some(Value::Null) => None,
                Some(max) => Some(read(max)?),
            };
            region.ranges[index] = Range {
                min,
                min_inclusive: flag("minInclusive", true)?,
                max,
                max_inclusive: flag("maxInclusive", false)?,
            };
        }
        Ok(region)
    }
}

/// The fields of a range in Sleeper's Region JSON (`RegionSerDe`).
const RANGE_FIELDS: [&str; 4] = ["min", "minInclusive", "max", "maxInclusive"];

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self.ranges.iter().map(Range::to_string).collect();
        write!(f, "{}", ranges.join(" × "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::Field;

    fn string_key_schema() -> Schema {
        Schema::new(
            vec![Field::primitive("key", PrimitiveType::String)],
            vec![],
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn intersections_keep_the_tighter_bound_and_its_inclusiveness() {
        let long = KeyValue::Long;
        let partition = Range::partition(long(10), Some(long(20)));
        let at_most_15 = Range {
            min: long(i64::MIN),
            min_inclusive: true,
            max: Some(long(15)),
            max_inclusive: true,
        };
        let from_20 = Range::partition(long(20), None);
        let above_10 = Range {
            min: long(10),
            min_inclusive: false,
            max: None,
            max_inclusive: false,
        };
        let order = KeyOrder::default();
        let both = partition.intersect(&at_most_15, order).unwrap();
        assert_eq!((both.min, both.max), (long(10), Some(long(15))));
        assert!(both.min_inclusive && both.max_inclusive);
        assert_eq!(partition.intersect(&from_20, order), None);
        assert!(!partition.intersect(&above_10, order).unwrap().min_inclusive);
        assert_eq!(
            Range::everything(PrimitiveType::Long).intersect(&partition, order),
            Some(partition)
        );
    }

    #[test]
    fn a_range_with_a_field_not_known_or_not_an_object_is_refused() {
        let schema = string_key_schema();
        for (json, expected) in [
            (
                r#"{"key": {"min": "Zw==", "maxExclusive": "aA=="}}"#,
                r#"unknown range field "maxExclusive""#,
            ),
            (r#"{"key": "Zw=="}"#, "expected a range object"),
        ] {
            let value: Value = serde_json::from_str(json).unwrap();
            let error = Region::from_json(&value, &schema).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn reads_sleeper_defaults_and_base64_strings() {
        let schema = string_key_schema();
        let json: Value =
            serde_json::from_str(r#"{"key": {"min": "Zw\u003d\u003d", "max": null}}"#).unwrap();
        let region = Region::from_json(&json, &schema).unwrap();
        assert_eq!(
            region.ranges[0],
            Range::partition(KeyValue::String("g".into()), None)
        );
    }

    #[test]
    fn writes_what_it_reads() {
        let schema = string_key_schema();
        let region = Region {
            ranges: vec![Range::partition(
                KeyValue::String("g".into()),
                Some(KeyValue::String("p".into())),
            )],
        };
        let json = region.to_json(&schema);
        assert_eq!(
            json.to_string(),
            r#"{"key":{"min":"Zw==","minInclusive":true,"max":"cA==","maxInclusive":false},"stringsBase64Encoded":true}"#
        );
        assert_eq!(Region::from_json(&json, &schema).unwrap(), region);
    }

    #[test]
    fn plain_strings_when_not_base64() {
        let schema = string_key_schema();
        let json: Value =
            serde_json::from_str(r#"{"key": {"min": "g"}, "stringsBase64Encoded": false}"#)
                .unwrap();
        let region = Region::from_json(&json, &schema).unwrap();
        assert_eq!(region.ranges[0].min, KeyValue::String("g".into()));
    }

    #[test]
    fn names_an_unknown_key() {
        let schema = string_key_schema();
        let json: Value = serde_json::from_str(r#"{"nope": {"min": "Zw=="}}"#).unwrap();
        let error = Region::from_json(&json, &schema).unwrap_err().to_string();
        assert!(
            error.contains(r#"Key "nope" was not a row key field in the table schema"#),
            "{error}"
        );
    }

    #[test]
    fn inclusive_and_exclusive_bounds() {
        let range = Range {
            min: KeyValue::Int(1),
            min_inclusive: false,
            max: Some(KeyValue::Int(3)),
            max_inclusive: true,
        };
        let order = KeyOrder::default();
        assert!(!range.contains(&KeyValue::Int(1), order));
        assert!(range.contains(&KeyValue::Int(2), order));
        assert!(range.contains(&KeyValue::Int(3), order));
        assert!(!range.contains(&KeyValue::Int(4), order));
        assert!(range.overlaps(&KeyValue::Int(-5), &KeyValue::Int(2), order));
        assert!(range.overlaps(&KeyValue::Int(3), &KeyValue::Int(9), order));
        assert!(!range.overlaps(&KeyValue::Int(-5), &KeyValue::Int(1), order));
        assert!(!range.overlaps(&KeyValue::Int(4), &KeyValue::Int(9), order));
    }
}
