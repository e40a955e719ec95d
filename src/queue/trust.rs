//! What a queue message may ask for. Messages come from outside the process: ids become object
//! keys and file URLs are read, so both are checked before anything is touched.

use crate::error::{Error, Result};
use crate::query::BulkExportLeafPartitionQuery;
use crate::table::SleeperTable;

const MAX_ID_LENGTH: usize = 128;

/// An id that is one safe path segment: 1 to 128 of `A-Z a-z 0-9 . _ -`, and not `.` or `..`.
pub fn check_id(field: &str, value: &str) -> Result<()> {
    let safe = !value.is_empty()
        && value.len() <= MAX_ID_LENGTH
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if safe {
        Ok(())
    } else {
        Err(Error::Untrusted(format!(
            "{field} {value:?} is not a safe path segment (1 to {MAX_ID_LENGTH} of A-Z, a-z, 0-9, '.', '_', '-')"
        )))
    }
}

/// Checks the ids of a leaf query, and that every file it reads resolves to a place inside its
/// table's `data/` location. Nothing is read before this passes, so a rejected file tells the
/// sender nothing about what exists.
pub fn check_leaf_query(query: &BulkExportLeafPartitionQuery, table: &SleeperTable) -> Result<()> {
    check_id("tableId", &query.table_id)?;
    check_id("exportId", &query.export_id)?;
    check_id("subExportId", &query.sub_export_id)?;
    let data = table.location.sub_location("data");
    for file in &query.files {
        let untrusted = |what: String| {
            Error::Untrusted(format!(
                "file {file:?} {what}: only files under table {}'s data location {data} are read",
                query.table_id
            ))
        };
        match table.stores.resolve(file) {
            Ok(location) if data.contains(&location) => {}
            Ok(location) => return Err(untrusted(format!("resolves to {location}"))),
            Err(error) => return Err(untrusted(format!("is not a location ({error})"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_single_safe_segments() {
        for good in ["e1", "0b7f5c2e-9d0a-4c1e-8e53-2f1a6f0d9c11", "table.v2_x"] {
            check_id("exportId", good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\\\b",
            "../x",
            "with space",
            &"x".repeat(129),
        ] {
            let error = check_id("exportId", bad).unwrap_err().to_string();
            assert!(
                error.contains("exportId") && error.contains("not a safe path segment"),
                "{error}"
            );
        }
    }
}
