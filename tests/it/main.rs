//! The integration tests, in one binary so that DataFusion is linked once: against the real
//! local S3 + SQS server (moto) and pyarrow that `scripts/test.sh` starts and installs, the
//! fixtures Sleeper wrote, and the `sleeper-export` binary.

mod common;

mod cli;
mod compaction;
mod cut;
mod export;
mod instance;
mod leaf_sql;
mod memory;
mod provider;
mod queues;
mod s3;
mod sleeper_formats;
mod sql;
