//! The scalar functions of a leaf's SQL. Most functions make values no bigger than a small
//! multiple of their inputs, and those inputs are the leaf's rows. A few make values whose size
//! an argument sets: `repeat('x', 1000000000)` is a gigabyte a row, allocated before any
//! memory pool is asked, and broadcast to a batch of rows it takes the runner down. Those are
//! either bounded (the size they would make is computed from their arguments first) or, where
//! they generate rows of their own rather than transform the leaf's, not offered.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::SessionStateDefaults;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

use crate::error::Error;

/// Bytes one call of a bounded function (one batch of rows) may make.
pub const MAX_FUNCTION_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Functions whose output size their arguments set and that make values from nothing of the
/// leaf's (lists of a length given, series of numbers): not offered.
const GENERATORS: [&str; 4] = ["range", "generate_series", "array_repeat", "array_resize"];

/// How the output size of a bounded function follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// `repeat(text, n)`: the text's bytes, `n` times.
    Repeat,
    /// `lpad` / `rpad(text, n, …)`: `n` characters, up to 4 bytes each.
    Pad,
    /// A generator: refused when planned.
    Refused,
}

/// DataFusion's default scalar functions, with those above bounded or refused.
pub fn leaf_sql_functions() -> Vec<Arc<ScalarUDF>> {
    SessionStateDefaults::default_scalar_functions()
        .into_iter()
        .map(|function| {
            let bound = match function.name() {
                "repeat" => Some(Bound::Repeat),
                "lpad" | "rpad" => Some(Bound::Pad),
                name if GENERATORS.contains(&name) => Some(Bound::Refused),
                _ => None,
            };
            match bound {
                Some(bound) => Arc::new(ScalarUDF::new_from_impl(Bounded {
                    inner: Arc::clone(&function),
                    bound,
                })),
                None => function,
            }
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    bound: Bound,
}

impl Bounded {
    fn refused(&self) -> DataFusionError {
        DataFusionError::Plan(format!(
            "{} is not available in an export's SQL: it makes values whose size its arguments \
             set, not the leaf's rows (not offered: {})",
            self.inner.name(),
            GENERATORS.join(", ")
        ))
    }

    /// The bytes the call would make, from its arguments, before it makes them.
    fn output_bytes(&self, args: &ScalarFunctionArgs) -> DFResult<u64> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let counts = cast(&arrays[1], &DataType::Int64)?;
        let counts = counts.as_primitive::<Int64Type>();
        let count = |row: usize| {
            if counts.is_valid(row) {
                counts.value(row).max(0) as u64
            } else {
                0
            }
        };
        // All arguments scalars: one value, broadcast to every row of the batch.
        let rows = counts.len();
        let broadcast = if rows == 1 {
            args.number_rows as u64
        } else {
            1
        };
        let bytes = match self.bound {
            Bound::Repeat => {
                let lengths = cast(&length(&arrays[0])?, &DataType::Int64)?;
                let lengths = lengths.as_primitive::<Int64Type>();
                (0..rows)
                    .map(|row| (lengths.value(row).max(0) as u64).saturating_mul(count(row)))
                    .fold(0u64, u64::saturating_add)
            }
            Bound::Pad => (0..rows)
                .map(|row| count(row).saturating_mul(4))
                .fold(0u64, u64::saturating_add),
            Bound::Refused => return Err(self.refused()),
        };
        Ok(bytes.saturating_mul(broadcast))
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        match self.bound {
            Bound::Refused => Err(self.refused()),
            _ => self.inner.return_type(arg_types),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        match self.bound {
            Bound::Refused => Err(self.refused()),
            _ => self.inner.return_field_from_args(args),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let bytes = self.output_bytes(&args)?;
        if bytes > MAX_FUNCTION_OUTPUT_BYTES {
            // Ours, not DataFusion's: the same SQL fails the same way on every runner, so its
            // message goes to the dead-letter queue rather than round again.
            return Err(DataFusionError::External(Box::new(Error::Sql(format!(
                "{} would make {bytes} bytes for {} rows, over the {MAX_FUNCTION_OUTPUT_BYTES} \
                 bytes one call may make in an export's SQL",
                self.inner.name(),
                args.number_rows
            )))));
        }
        self.inner.invoke_with_args(args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> DFResult<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> DFResult<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}
