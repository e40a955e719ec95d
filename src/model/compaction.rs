//! Sleeper's compaction rules for a table: `sleeper.table.filters` (age-off) and
//! `sleeper.table.aggregations`, parsed and validated against the schema as Sleeper does.

use std::fmt;

use super::schema::{FieldType, PrimitiveType, Schema};
use crate::error::{Error, Result};

/// The table properties the rules are read from.
pub const FILTERS: &str = "sleeper.table.filters";
pub const AGGREGATIONS: &str = "sleeper.table.aggregations";

/// Keep rows whose `column` (a long, milliseconds since the epoch) is at least
/// `now - max_age_millis`; rows where it is null are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeOff {
    pub column: String,
    pub max_age_millis: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregationOp {
    Sum,
    Min,
    Max,
    MapSum,
    MapMin,
    MapMax,
}

impl AggregationOp {
    fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sum" => AggregationOp::Sum,
            "min" => AggregationOp::Min,
            "max" => AggregationOp::Max,
            "map_sum" => AggregationOp::MapSum,
            "map_min" => AggregationOp::MapMin,
            "map_max" => AggregationOp::MapMax,
            _ => return None,
        })
    }

    /// The operation applied to single values (for map operations, to the values of one map key).
    pub fn scalar(self) -> AggregationOp {
        match self {
            AggregationOp::MapSum => AggregationOp::Sum,
            AggregationOp::MapMin => AggregationOp::Min,
            AggregationOp::MapMax => AggregationOp::Max,
            other => other,
        }
    }

    fn is_map(self) -> bool {
        self != self.scalar()
    }
}

impl fmt::Display for AggregationOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AggregationOp::Sum => "sum",
            AggregationOp::Min => "min",
            AggregationOp::Max => "max",
            AggregationOp::MapSum => "map_sum",
            AggregationOp::MapMin => "map_min",
            AggregationOp::MapMax => "map_max",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    pub column: String,
    pub op: AggregationOp,
}

/// What an export does beyond merging: filters, then aggregation of rows with equal keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionRules {
    pub age_offs: Vec<AgeOff>,
    /// One per value column, in schema order; empty when the table does not aggregate.
    pub aggregations: Vec<Aggregation>,
}

impl CompactionRules {
    pub fn parse(
        filters: Option<&str>,
        aggregations: Option<&str>,
        schema: &Schema,
    ) -> Result<Self> {
        Ok(CompactionRules {
            age_offs: filters.map_or(Ok(vec![]), |text| parse_filters(text, schema))?,
            aggregations: aggregations
                .map_or(Ok(vec![]), |text| parse_aggregations(text, schema))?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.age_offs.is_empty() && self.aggregations.is_empty()
    }
}

/// `name(arg, arg), name(arg)` → `[(name, [arg, arg]), (name, [arg])]`.
fn parse_calls(text: &str, property: &str) -> Result<Vec<(String, Vec<String>)>> {
    let bad = |message: String| Error::Property {
        property: property.to_owned(),
        message,
    };
    let mut calls = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let open = rest
            .find('(')
            .ok_or_else(|| bad(format!("expected name(arguments) at {rest:?}")))?;
        let close = rest[open..]
            .find(')')
            .map(|i| open + i)
            .ok_or_else(|| bad(format!("missing ')' in {rest:?}")))?;
        let name = rest[..open].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(format!("{name:?} is not a function name")));
        }
        let arguments = rest[open + 1..close]
            .split(',')
            .map(|a| a.trim().to_owned())
            .collect();
        calls.push((name.to_owned(), arguments));
        rest = rest[close + 1..].trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma.trim_start();
            if rest.is_empty() {
                return Err(bad("trailing ','".into()));
            }
        } else if !rest.is_empty() {
            return Err(bad(format!("expected ',' before {rest:?}")));
        }
    }
    Ok(calls)
}

pub fn parse_filters(text: &str, schema: &Schema) -> Result<Vec<AgeOff>> {
    let bad = |message: String| Error::Property {
        property: FILTERS.to_owned(),
        message,
    };
    parse_calls(text, FILTERS)?
        .into_iter()
        .map(|(name, arguments)| {
            if !name.eq_ignore_ascii_case("ageoff") {
                return Err(bad(format!(
                    "unknown filter {name:?}: the only filter is ageOff(column, maxAgeMillis)"
                )));
            }
            let [column, age] = arguments.as_slice() else {
                return Err(bad(format!(
                    "ageOff takes a column and an age in milliseconds, not {arguments:?}"
                )));
            };
            let field = schema
                .field(column)
                .ok_or_else(|| bad(format!("ageOff column {column:?} is not in the schema")))?;
            if field.field_type != FieldType::Primitive(PrimitiveType::Long) {
                return Err(bad(format!(
                    "ageOff column {column:?} must be a long (milliseconds since the epoch)"
                )));
            }
            let max_age_millis =
                age.parse::<i64>()
                    .ok()
                    .filter(|age| *age >= 0)
                    .ok_or_else(|| {
                        bad(format!(
                            "ageOff age {age:?} is not a non-negative whole number of milliseconds"
                        ))
                    })?;
            Ok(AgeOff {
                column: column.clone(),
                max_age_millis,
            })
        })
        .collect()
}

pub fn parse_aggregations(text: &str, schema: &Schema) -> Result<Vec<Aggregation>> {
    let bad = |message: String| Error::Property {
        property: AGGREGATIONS.to_owned(),
        message,
    };
    let mut by_column: Vec<Option<AggregationOp>> = vec![None; schema.value_fields.len()];
    for (name, arguments) in parse_calls(text, AGGREGATIONS)? {
        let op = AggregationOp::parse(&name).ok_or_else(|| {
            bad(format!(
                "unknown aggregation {name:?}: use sum, min, max, map_sum, map_min or map_max"
            ))
        })?;
        let [column] = arguments.as_slice() else {
            return Err(bad(format!("{op} takes one column, not {arguments:?}")));
        };
        if schema.key_fields().any(|k| &k.name == column) {
            return Err(bad(format!(
                "{op}({column}): {column:?} is a key column, and key columns cannot be aggregated"
            )));
        }
        let index = schema
            .value_fields
            .iter()
            .position(|f| &f.name == column)
            .ok_or_else(|| bad(format!("{op}({column}): {column:?} is not in the schema")))?;
        let field = &schema.value_fields[index];
        if field.nullable {
            return Err(bad(format!(
                "{op}({column}): {column:?} is nullable, and nullable columns cannot be aggregated"
            )));
        }
        let numeric = |t: PrimitiveType| matches!(t, PrimitiveType::Int | PrimitiveType::Long);
        let fits = match (&field.field_type, op) {
            (FieldType::Primitive(t), AggregationOp::Sum) => numeric(*t),
            (FieldType::Primitive(_), AggregationOp::Min | AggregationOp::Max) => true,
            (FieldType::Map { value, .. }, _) => op.is_map() && numeric(*value),
            _ => false,
        };
        if !fits {
            let needs = match op {
                AggregationOp::Sum => "an int or long column",
                AggregationOp::Min | AggregationOp::Max => {
                    "an int, long, string or byte array column"
                }
                _ => "a map with int or long values",
            };
            return Err(bad(format!("{op}({column}): {op} needs {needs}")));
        }
        if by_column[index].replace(op).is_some() {
            return Err(bad(format!(
                "column {column:?} has more than one aggregation"
            )));
        }
    }
    let missing: Vec<&str> = schema
        .value_fields
        .iter()
        .zip(&by_column)
        .filter(|(_, op)| op.is_none())
        .map(|(f, _)| f.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "every value column needs exactly one aggregation; none for {}",
            missing.join(", ")
        )));
    }
    Ok(schema
        .value_fields
        .iter()
        .zip(by_column)
        .map(|(field, op)| Aggregation {
            column: field.name.clone(),
            op: op.expect("checked above"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::Field;

    fn schema() -> Schema {
        Schema::new(
            vec![Field::primitive("key", PrimitiveType::String)],
            vec![Field::primitive("ts", PrimitiveType::Long)],
            vec![
                Field::primitive("count", PrimitiveType::Long),
                Field::primitive("small", PrimitiveType::Int),
                Field::new(
                    "counts",
                    FieldType::Map {
                        key: PrimitiveType::String,
                        value: PrimitiveType::Long,
                    },
                ),
            ],
        )
        .unwrap()
    }

    fn error(filters: Option<&str>, aggregations: Option<&str>) -> String {
        CompactionRules::parse(filters, aggregations, &schema())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_sleepers_syntax_case_insensitively() {
        let rules = CompactionRules::parse(
            Some("ageOff(ts, 86400000)"),
            Some("SUM(count), max(small) ,Map_Sum(counts)"),
            &schema(),
        )
        .unwrap();
        assert_eq!(
            rules.age_offs,
            [AgeOff {
                column: "ts".into(),
                max_age_millis: 86_400_000
            }]
        );
        let ops: Vec<AggregationOp> = rules.aggregations.iter().map(|a| a.op).collect();
        assert_eq!(
            ops,
            [
                AggregationOp::Sum,
                AggregationOp::Max,
                AggregationOp::MapSum
            ]
        );
        assert!(CompactionRules::parse(None, None, &schema())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn every_value_column_needs_exactly_one_aggregation() {
        assert!(error(None, Some("sum(count), min(small)")).contains("none for counts"));
        assert!(error(
            None,
            Some("sum(count), min(small), max(small), map_sum(counts)")
        )
        .contains("\"small\" has more than one"));
    }

    #[test]
    fn keys_nullable_and_mistyped_columns_are_refused() {
        assert!(error(None, Some("sum(key)")).contains("key column"));
        assert!(error(None, Some("sum(nope)")).contains("not in the schema"));
        assert!(error(None, Some("map_sum(count)")).contains("map_sum needs a map"));
        assert!(error(None, Some("sum(counts)")).contains("sum needs an int or long column"));
        assert!(error(None, Some("avg(count)")).contains("unknown aggregation \"avg\""));
        assert!(error(None, Some("sum(count) min(small)")).contains("expected ','"));
        let nullable = Schema::new(
            vec![Field::primitive("key", PrimitiveType::Int)],
            vec![],
            vec![Field::primitive("v", PrimitiveType::Long).nullable()],
        )
        .unwrap();
        let message = parse_aggregations("sum(v)", &nullable)
            .unwrap_err()
            .to_string();
        assert!(message.contains("nullable"), "{message}");
    }

    #[test]
    fn filters_are_checked() {
        assert!(error(Some("ageOff(key,10)"), None).contains("must be a long"));
        assert!(error(Some("ageOff(ts)"), None).contains("takes a column and an age"));
        assert!(error(Some("ageOff(ts,-1)"), None).contains("non-negative"));
        assert!(error(Some("keepAll(ts)"), None).contains("unknown filter"));
        assert!(error(Some("ageOff(ts,10"), None).contains("missing ')'"));
    }
}
