//! Sleeper's partition tree and file references.

use std::collections::HashMap;

use super::key::KeyValue;
use super::order::KeyOrder;
use super::region::{Range, Region};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub id: String,
    pub is_leaf: bool,
    pub parent_id: Option<String>,
    pub child_ids: Vec<String>,
    pub region: Region,
    /// The row-key index the partition was split on; -1 for leaves.
    pub dimension: i32,
}

/// A reference from a partition to a data file. After a split a file is referenced by both
/// children without being rewritten, so its rows must be filtered to each partition's region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReference {
    pub filename: String,
    pub partition_id: String,
    pub number_of_rows: u64,
    pub count_approximate: bool,
    pub only_contains_data_for_this_partition: bool,
    /// The compaction job the reference is assigned to (Sleeper's `jobId`), if any.
    pub job_id: Option<String>,
}

/// Every reference to one file, as Sleeper's state holds a file. A file with no references left
/// (replaced by a compaction) stays in the state, and still exists for Sleeper's rules, until
/// garbage collection deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    pub filename: String,
    /// In order of partition id, as Sleeper keeps them.
    pub references: Vec<FileReference>,
}

impl StateFile {
    /// Files with their references grouped, in Sleeper's order: by filename, then partition id
    /// (Java's `TreeMap`s of strings, so in Java's string order).
    pub fn group(references: impl IntoIterator<Item = FileReference>) -> Vec<StateFile> {
        let mut by_file: HashMap<String, Vec<FileReference>> = HashMap::new();
        for reference in references {
            by_file
                .entry(reference.filename.clone())
                .or_default()
                .push(reference);
        }
        let mut files: Vec<StateFile> = by_file
            .into_iter()
            .map(|(filename, references)| StateFile {
                filename,
                references,
            })
            .collect();
        sort_as_sleeper(&mut files);
        files
    }
}

/// Sleeper's order of files and of each file's references.
pub fn sort_as_sleeper(files: &mut [StateFile]) {
    let java = KeyOrder::Java;
    files.sort_by(|a, b| java.compare_strings(&a.filename, &b.filename));
    for file in files {
        file.references
            .sort_by(|a, b| java.compare_strings(&a.partition_id, &b.partition_id));
    }
}

/// A validated tree: one root, every child known, leaves childless.
#[derive(Debug, Clone)]
pub struct PartitionTree {
    partitions: Vec<Partition>,
    index: HashMap<String, usize>,
    root: usize,
}

impl PartitionTree {
    /// A balanced partition tree over split points on the first row key, built bottom-up as
    /// Sleeper builds one: leaves left to right, then parents of adjacent pairs up to one root.
    pub fn from_split_points(
        table_id: &str,
        schema: &crate::model::Schema,
        split_points: &[KeyValue],
    ) -> Result<PartitionTree> {
        let everything = Region::everything(schema);
        let mut level: Vec<Partition> = (0..=split_points.len())
            .map(|i| {
                let mut region = everything.clone();
                region.ranges[0] = Range::partition(
                    if i == 0 {
                        everything.ranges[0].min.clone()
                    } else {
                        split_points[i - 1].clone()
                    },
                    split_points.get(i).cloned(),
                );
                Partition {
                    id: format!("leaf-{i}"),
                    is_leaf: true,
                    parent_id: None,
                    child_ids: vec![],
                    region,
                    dimension: -1,
                }
            })
            .collect();
        let mut all = Vec::new();
        let mut depth = 0;
        while level.len() > 1 {
            depth += 1;
            let mut parents = Vec::new();
            let mut pending = std::mem::take(&mut level).into_iter().peekable();
            while let Some(mut left) = pending.next() {
                match pending.next() {
                    Some(mut right) => {
                        let id = format!("node-{depth}-{}", parents.len());
                        let mut region = left.region.clone();
                        region.ranges[0].max = right.region.ranges[0].max.clone();
                        left.parent_id = Some(id.clone());
                        right.parent_id = Some(id.clone());
                        parents.push(Partition {
                            child_ids: vec![left.id.clone(), right.id.clone()],
                            id,
                            is_leaf: false,
                            parent_id: None,
                            region,
                            dimension: 0,
                        });
                        all.push(left);
                        all.push(right);
                    }
                    None => parents.push(left),
                }
            }
            level = parents;
        }
        let mut root = level.pop().expect("at least one partition");
        if !root.is_leaf || all.is_empty() {
            root.id = "root".into();
            for child in all.iter_mut().filter(|p| root.child_ids.contains(&p.id)) {
                child.parent_id = Some("root".into());
            }
        }
        all.push(root);
        PartitionTree::new(table_id, all)
    }

    pub fn new(table: &str, partitions: Vec<Partition>) -> Result<Self> {
        let invalid = |message: String| Error::PartitionTree {
            table: table.to_owned(),
            message,
        };
        let mut index = HashMap::with_capacity(partitions.len());
        for (i, partition) in partitions.iter().enumerate() {
            if index.insert(partition.id.clone(), i).is_some() {
                return Err(invalid(format!("partition {} appears twice", partition.id)));
            }
        }
        let mut roots = partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.parent_id.is_none());
        let root = match (roots.next(), roots.next()) {
            (Some((i, _)), None) => i,
            (None, _) => return Err(invalid("no root partition".into())),
            (Some((_, a)), Some((_, b))) => {
                return Err(invalid(format!("two roots: {} and {}", a.id, b.id)))
            }
        };
        for partition in &partitions {
            if partition.is_leaf != partition.child_ids.is_empty() {
                return Err(invalid(format!(
                    "partition {} is {} but has {} children",
                    partition.id,
                    if partition.is_leaf {
                        "a leaf"
                    } else {
                        "not a leaf"
                    },
                    partition.child_ids.len()
                )));
            }
            for child in &partition.child_ids {
                let known = index.get(child).map(|&i| &partitions[i]);
                if known.and_then(|c| c.parent_id.as_deref()) != Some(partition.id.as_str()) {
                    return Err(invalid(format!(
                        "partition {} names child {child}, which does not name it as parent",
                        partition.id
                    )));
                }
            }
            if let Some(parent) = &partition.parent_id {
                if !index.contains_key(parent) {
                    return Err(invalid(format!(
                        "partition {} has unknown parent {parent}",
                        partition.id
                    )));
                }
            }
        }
        Ok(PartitionTree {
            partitions,
            index,
            root,
        })
    }

    pub fn root(&self) -> &Partition {
        &self.partitions[self.root]
    }

    pub fn get(&self, id: &str) -> Option<&Partition> {
        self.index.get(id).map(|&i| &self.partitions[i])
    }

    pub fn all(&self) -> &[Partition] {
        &self.partitions
    }

    /// Leaves in key order of their regions (depth first, children in stored order, which is
    /// left-to-right for trees Sleeper builds).
    pub fn leaves(&self) -> Vec<&Partition> {
        let mut leaves = Vec::new();
        let mut stack = vec![self.root()];
        while let Some(partition) = stack.pop() {
            if partition.is_leaf {
                leaves.push(partition);
            } else {
                stack.extend(partition.child_ids.iter().rev().filter_map(|c| self.get(c)));
            }
        }
        leaves
    }

    /// Parent first, up to the root.
    pub fn ancestors(&self, id: &str) -> Vec<&Partition> {
        let mut ancestors = Vec::new();
        let mut current = self.get(id).and_then(|p| p.parent_id.as_deref());
        while let Some(parent_id) = current {
            let parent = self.get(parent_id).expect("validated: parents exist");
            ancestors.push(parent);
            current = parent.parent_id.as_deref();
        }
        ancestors
    }

    /// Splits leaf `id` on row key `dimension` at `split_point` into children with the given ids.
    pub fn split(
        &mut self,
        id: &str,
        dimension: usize,
        split_point: KeyValue,
        child_ids: [String; 2],
        order: KeyOrder,
    ) -> Result<()> {
        let index = *self.index.get(id).ok_or_else(|| Error::PartitionTree {
            table: String::new(),
            message: format!("cannot split unknown partition {id}"),
        })?;
        let parent = &self.partitions[index];
        let range = &parent.region.ranges[dimension];
        if !parent.is_leaf || !range.contains(&split_point, order) || range.min == split_point {
            return Err(Error::PartitionTree {
                table: String::new(),
                message: format!("cannot split {id} on dimension {dimension} at {split_point}"),
            });
        }
        let mut left = parent.region.clone();
        left.ranges[dimension] = Range::partition(range.min.clone(), Some(split_point.clone()));
        let mut right = parent.region.clone();
        right.ranges[dimension] = Range::partition(split_point, range.max.clone());
        for (child_id, region) in child_ids.iter().zip([left, right]) {
            self.index.insert(child_id.clone(), self.partitions.len());
            self.partitions.push(Partition {
                id: child_id.clone(),
                is_leaf: true,
                parent_id: Some(id.to_owned()),
                child_ids: vec![],
                region,
                dimension: -1,
            });
        }
        let parent = &mut self.partitions[index];
        parent.is_leaf = false;
        parent.child_ids = child_ids.to_vec();
        parent.dimension = dimension as i32;
        Ok(())
    }
}
