//! Sleeper's data model: schemas, key order, regions, partitions, file references, properties.

pub mod compaction;
pub mod java_properties;
pub mod key;
pub mod order;
pub mod partition;
pub mod properties;
pub mod region;
pub mod schema;
pub mod version;

pub use compaction::{AgeOff, Aggregation, AggregationOp, CompactionRules};
pub use java_properties::JavaProperties;
pub use key::KeyValue;
pub use order::KeyOrder;
pub use partition::{FileReference, Partition, PartitionTree, StateFile};
pub use properties::{ParquetOptions, TableProperties};
pub use region::{Range, Region};
pub use schema::{Field, FieldType, PrimitiveType, Schema};
pub use version::StateVersion;
