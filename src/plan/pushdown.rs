//! SQL predicates on row keys as Sleeper regions, so that a scan reads only the leaves (and row
//! groups) a query can touch, and drops the rows outside them in its region filter.
//!
//! A predicate is translated only when the region holds exactly the rows the predicate keeps in
//! SQL's own order. Equality does not depend on order. Ranges do for strings and byte arrays,
//! which DataFusion compares by unsigned bytes: the order of tables of Sleeper's DataFusion
//! engine, so their ranges are always translated, but not of the Java engine's (see
//! `model::order`). For a Java-engine table:
//! - a string bound made only of characters below U+E000 splits every string the same way in
//!   both orders (the orders disagree only between U+E000..=U+FFFF and characters above U+FFFF,
//!   and such a bound is neither), so such ranges are translated;
//! - a byte-array bound splits differently as soon as a byte is 0x80 or more, so byte-array
//!   ranges are left to DataFusion's filter.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};

use crate::model::{KeyOrder, KeyValue, PrimitiveType, Range, Region, Schema};

/// More regions than this from one predicate are not worth checking row by row: the predicate is
/// left to DataFusion's filter, which evaluates it far more cheaply.
pub const MAX_REGIONS: usize = 64;

/// What a scan with a region filter does with each of `filters`: applies exactly those that
/// translate into regions, leaves the others to DataFusion's filter.
pub fn filters_pushed_down(
    filters: &[&Expr],
    schema: &Schema,
    order: KeyOrder,
) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|filter| match key_regions(filter, schema, order) {
            Some(_) => TableProviderFilterPushDown::Exact,
            None => TableProviderFilterPushDown::Unsupported,
        })
        .collect()
}

/// The regions that rows must lie in to pass every filter; `None` when the filters say nothing
/// about row keys.
pub fn filters_regions(filters: &[Expr], schema: &Schema, order: KeyOrder) -> Option<Vec<Region>> {
    filters
        .iter()
        .filter_map(|filter| key_regions(filter, schema, order))
        .reduce(|left, right| intersect_unions(&left, &right, order))
}

/// The regions whose union holds exactly the rows `filter` keeps, or `None` when it is not (only)
/// a predicate on row keys that can be translated exactly.
pub fn key_regions(filter: &Expr, schema: &Schema, order: KeyOrder) -> Option<Vec<Region>> {
    let regions = match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => intersect_unions(
            &key_regions(left, schema, order)?,
            &key_regions(right, schema, order)?,
            order,
        ),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut regions = key_regions(left, schema, order)?;
            regions.extend(key_regions(right, schema, order)?);
            regions
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            comparison(left, *op, right, schema, order)?
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let (dimension, key_type) = row_key(expr, schema)?;
            let low = ordered_bound(literal(low, key_type)?, order)?;
            let high = ordered_bound(literal(high, key_type)?, order)?;
            let range = Range {
                min: low,
                min_inclusive: true,
                max: Some(high),
                max_inclusive: true,
            };
            region_on(schema, dimension, range, order)
                .into_iter()
                .collect()
        }
        Expr::InList(in_list) if !in_list.negated => {
            let (dimension, key_type) = row_key(&in_list.expr, schema)?;
            in_list
                .list
                .iter()
                .map(|value| {
                    Some(region_on(
                        schema,
                        dimension,
                        point(literal(value, key_type)?),
                        order,
                    ))
                })
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect()
        }
        _ => return None,
    };
    (regions.len() <= MAX_REGIONS).then_some(regions)
}

/// The rows in both unions of regions, as a union of regions.
pub fn intersect_unions(left: &[Region], right: &[Region], order: KeyOrder) -> Vec<Region> {
    left.iter()
        .flat_map(|a| right.iter().filter_map(move |b| a.intersect(b, order)))
        .collect()
}

fn comparison(
    left: &Expr,
    op: Operator,
    right: &Expr,
    schema: &Schema,
    order: KeyOrder,
) -> Option<Vec<Region>> {
    let (column, op, value) = match (left, right) {
        (column, value @ Expr::Literal(..)) => (column, op, value),
        (value @ Expr::Literal(..), column) => (column, op.swap()?, value),
        _ => return None,
    };
    let (dimension, key_type) = row_key(column, schema)?;
    let value = literal(value, key_type)?;
    let minimum = KeyValue::minimum(key_type);
    let range = match op {
        Operator::Eq => point(value),
        Operator::Lt | Operator::LtEq => Range {
            min: minimum,
            min_inclusive: true,
            max: Some(ordered_bound(value, order)?),
            max_inclusive: op == Operator::LtEq,
        },
        Operator::Gt | Operator::GtEq => Range {
            min: ordered_bound(value, order)?,
            min_inclusive: op == Operator::GtEq,
            max: None,
            max_inclusive: false,
        },
        _ => return None,
    };
    Some(
        region_on(schema, dimension, range, order)
            .into_iter()
            .collect(),
    )
}

/// Everything, except on one row key.
fn region_on(schema: &Schema, dimension: usize, range: Range, order: KeyOrder) -> Option<Region> {
    let mut region = Region::everything(schema);
    region.ranges[dimension] = region.ranges[dimension].intersect(&range, order)?;
    Some(region)
}

fn point(value: KeyValue) -> Range {
    Range {
        min: value.clone(),
        min_inclusive: true,
        max: Some(value),
        max_inclusive: true,
    }
}

/// A range bound, if splitting values at it gives the same sides in SQL's order as in the
/// table's.
fn ordered_bound(value: KeyValue, order: KeyOrder) -> Option<KeyValue> {
    let agrees = order.agrees_with_arrow(value.key_type())
        || match &value {
            KeyValue::String(s) => s.chars().all(|c| c < '\u{E000}'),
            _ => false,
        };
    agrees.then_some(value)
}

/// The position and type of the row key `expr` names.
fn row_key(expr: &Expr, schema: &Schema) -> Option<(usize, PrimitiveType)> {
    let Expr::Column(column) = expr else {
        return None;
    };
    schema
        .row_key_fields
        .iter()
        .position(|field| field.name == column.name)
        .map(|dimension| (dimension, schema.row_key_types()[dimension]))
}

/// A literal of the key's type (DataFusion has already coerced literals to column types).
fn literal(expr: &Expr, key_type: PrimitiveType) -> Option<KeyValue> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match (key_type, value) {
        (PrimitiveType::Int, ScalarValue::Int32(Some(v))) => Some(KeyValue::Int(*v)),
        (PrimitiveType::Long, ScalarValue::Int64(Some(v))) => Some(KeyValue::Long(*v)),
        (
            PrimitiveType::String,
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Some(KeyValue::String(s.clone())),
        (
            PrimitiveType::ByteArray,
            ScalarValue::Binary(Some(b))
            | ScalarValue::LargeBinary(Some(b))
            | ScalarValue::BinaryView(Some(b))
            | ScalarValue::FixedSizeBinary(_, Some(b)),
        ) => Some(KeyValue::Bytes(b.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;
    use crate::model::Field;

    fn schema() -> Schema {
        Schema::new(
            vec![
                Field::primitive("id", PrimitiveType::Long),
                Field::primitive("name", PrimitiveType::String),
                Field::primitive("raw", PrimitiveType::ByteArray),
            ],
            vec![],
            vec![Field::primitive("value", PrimitiveType::Long)],
        )
        .unwrap()
    }

    fn only_id(range: Range) -> Vec<Region> {
        let mut region = Region::everything(&schema());
        region.ranges[0] = range;
        vec![region]
    }

    #[test]
    fn comparisons_and_their_combinations_become_regions() {
        let schema = schema();
        let key_regions =
            |filter: &Expr, schema: &Schema| key_regions(filter, schema, KeyOrder::Java);
        let long = KeyValue::Long;
        let between = col("id").gt_eq(lit(10i64)).and(lit(20i64).gt(col("id")));
        assert_eq!(
            key_regions(&between, &schema),
            Some(only_id(Range::partition(long(10), Some(long(20)))))
        );
        let either = col("id")
            .eq(lit(3i64))
            .or(col("id").in_list(vec![lit(5i64), lit(7i64)], false));
        let points: Vec<KeyValue> = key_regions(&either, &schema)
            .unwrap()
            .into_iter()
            .map(|region| region.ranges[0].min.clone())
            .collect();
        assert_eq!(points, [long(3), long(5), long(7)]);
        let disjoint = col("id").lt(lit(0i64)).and(col("id").gt(lit(5i64)));
        assert_eq!(key_regions(&disjoint, &schema), Some(vec![]));
    }

    #[test]
    fn only_exact_translations_are_made_for_the_java_order() {
        let schema = schema();
        let key_regions =
            |filter: &Expr, schema: &Schema| key_regions(filter, schema, KeyOrder::Java);
        for untranslatable in [
            col("value").eq(lit(1i64)),
            col("id").not_eq(lit(1i64)),
            col("id").eq(lit(1i64)).or(col("value").eq(lit(2i64))),
            // Above U+E000 SQL's order and Sleeper's disagree; signed and unsigned bytes always may.
            col("name").lt(lit("\u{ff21}")),
            col("raw").gt(lit(vec![1u8])),
            col("id").in_list((0..=MAX_REGIONS as i64).map(lit).collect(), false),
        ] {
            assert_eq!(
                key_regions(&untranslatable, &schema),
                None,
                "{untranslatable}"
            );
        }
        assert!(key_regions(&col("name").lt(lit("m")), &schema).is_some());
        assert!(key_regions(&col("raw").eq(lit(vec![0x80u8])), &schema).is_some());
    }

    #[test]
    fn every_range_translates_in_the_datafusion_order() {
        let schema = schema();
        for range in [
            col("name").lt(lit("\u{ff21}")),
            col("raw").gt(lit(vec![0x80u8])),
        ] {
            assert!(
                key_regions(&range, &schema, KeyOrder::DataFusion).is_some(),
                "{range}"
            );
        }
        assert_eq!(
            key_regions(&col("value").eq(lit(1i64)), &schema, KeyOrder::DataFusion),
            None
        );
    }
}
