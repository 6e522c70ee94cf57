//! Both structures of Flyte's "Nested Parallelization" page (flyte-nested-parallelism.md),
//! ported to nested rayfork tasks, for 6 items and a chunk size of 2:
//!
//! 1. Nested dynamics: `multi_wf -> level1 -> level2 (one per chunk) -> core_wf (one per item)
//!    -> step1 -> step2`, then `reduce` flattens the chunks.
//! 2. Mixed parallelism: `multi_wf -> level1 -> level2 (one per chunk) -> mappable (one per
//!    item, in parallel)`, then `reduce`.
//!
//! Flyte's dynamic workflows and launch plans become tasks that submit tasks; its map task over
//! chunks becomes `rayfork::map_chunks` (one `level2` task per chunk) and its map task over items
//! `rayfork::map_each`. Every task returns its value with the tree of the tasks it ran (name
//! and worker pid), which the example prints with the result.
//!
//! Run with `cargo run --release --example nested_workflows`.

use rayfork::{Runtime, remote};
use serde::{Deserialize, Serialize};

/// One task that ran: its name, the worker process it ran in, and the tasks it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    task: String,
    pid: u32,
    children: Vec<Node>,
}

impl Node {
    fn here(task: &str, children: Vec<Node>) -> Node {
        Node {
            task: task.into(),
            pid: std::process::id(),
            children,
        }
    }

    /// Prints the tree, one task per line.
    fn print(&self, prefix: &str, last: bool, root: bool) {
        let (branch, next) = match (root, last) {
            (true, _) => ("", ""),
            (false, true) => ("└─ ", "   "),
            (false, false) => ("├─ ", "│  "),
        };
        println!("{prefix}{branch}{} (pid {})", self.task, self.pid);
        let prefix = format!("{prefix}{next}");
        for (i, c) in self.children.iter().enumerate() {
            c.print(&prefix, i + 1 == self.children.len(), false);
        }
    }

    fn count(&self) -> usize {
        1 + self.children.iter().map(Node::count).sum::<usize>()
    }
}

/// A value with the tree of tasks that computed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Traced<T> {
    value: T,
    tree: Node,
}

/// Flattens the chunks' lists (Flyte's `reduce` task).
#[remote]
fn reduce(l: Vec<Vec<i64>>) -> Traced<Vec<i64>> {
    Traced {
        value: l.into_iter().flatten().collect(),
        tree: Node::here("reduce", Vec::new()),
    }
}

/// Gets each chunk's result and submits `reduce` over them: the tail of both `level1`s.
fn reduce_chunks(
    name: &str,
    chunks: &[rayfork::ObjectRef<Traced<Vec<i64>>>],
) -> rayfork::Result<Traced<Vec<i64>>> {
    let chunks = rayfork::get_all(chunks)?;
    let lists: Vec<Vec<i64>> = chunks.iter().map(|c| c.value.clone()).collect();
    let reduced = rayfork::get(&reduce::remote(lists))?;
    let mut children: Vec<Node> = chunks.into_iter().map(|c| c.tree).collect();
    children.push(reduced.tree);
    Ok(Traced {
        value: reduced.value,
        tree: Node::here(name, children),
    })
}

/// The values of `runs` in order, under a node `name` whose children are their trees: the
/// tail of both `level2`s.
fn gather(name: &str, runs: Vec<Traced<i64>>) -> Traced<Vec<i64>> {
    Traced {
        value: runs.iter().map(|r| r.value).collect(),
        tree: Node::here(name, runs.into_iter().map(|r| r.tree).collect()),
    }
}

/// `r` under a node `name`: the top of both workflows.
fn top(name: &str, r: Traced<Vec<i64>>) -> rayfork::Result<Traced<Vec<i64>>> {
    Ok(Traced {
        value: r.value,
        tree: Node::here(name, vec![r.tree]),
    })
}

/// Structure 1: nested dynamic workflows.
mod nested_dynamics {
    use super::*;

    /// `a + 1`.
    #[remote]
    fn step1(a: i64) -> Traced<i64> {
        Traced {
            value: a + 1,
            tree: Node::here("step1", Vec::new()),
        }
    }

    /// `a + 2`, run after `step1`, whose output it receives (its tree grows under step1's).
    #[remote]
    fn step2(a: Traced<i64>) -> Traced<i64> {
        let mut tree = a.tree;
        tree.children.push(Node::here("step2", Vec::new()));
        Traced {
            value: a.value + 2,
            tree,
        }
    }

    /// The core workflow: `step2(step1(a))`, step1's ref passed straight to step2.
    #[remote]
    fn core_wf(a: i64) -> rayfork::Result<Traced<i64>> {
        let r = rayfork::get(&step2::remote(step1::remote(a)))?;
        Ok(Traced {
            value: r.value,
            tree: Node::here("core_wf", vec![r.tree]),
        })
    }

    /// One `core_wf` per item of the chunk.
    #[remote]
    fn level2(l: Vec<i64>) -> rayfork::Result<Traced<Vec<i64>>> {
        let refs: Vec<_> = l.into_iter().map(core_wf::remote).collect();
        let runs = rayfork::get_all(&refs)?;
        Ok(gather("level2", runs))
    }

    /// One `level2` per chunk (`rayfork::map_chunks`), then `reduce`.
    #[remote]
    fn level1(l: Vec<i64>, chunk: usize) -> rayfork::Result<Traced<Vec<i64>>> {
        reduce_chunks("level1", &rayfork::map_chunks(level2::remote, l, chunk))
    }

    /// The top-level workflow.
    #[remote]
    pub fn multi_wf(l: Vec<i64>, chunk: usize) -> rayfork::Result<Traced<Vec<i64>>> {
        top("multi_wf", rayfork::get(&level1::remote(l, chunk))?)
    }
}

/// Structure 2: mixed parallelism, a map task inside the chunks.
mod mixed {
    use super::*;

    /// `a + 2`.
    #[remote]
    fn mappable(a: i64) -> Traced<i64> {
        Traced {
            value: a + 2,
            tree: Node::here("mappable", Vec::new()),
        }
    }

    /// Flyte's `map_task(mappable)(a=l)`: one `mappable` per item, all in parallel.
    #[remote]
    fn level2(l: Vec<i64>) -> rayfork::Result<Traced<Vec<i64>>> {
        let n = l.len();
        let runs = rayfork::map_each(mappable::remote, l, n)?;
        Ok(gather("level2", runs))
    }

    /// One `level2` per chunk (`rayfork::map_chunks`), then `reduce`.
    #[remote]
    fn level1(l: Vec<i64>, chunk: usize) -> rayfork::Result<Traced<Vec<i64>>> {
        reduce_chunks("level1", &rayfork::map_chunks(level2::remote, l, chunk))
    }

    /// The top-level workflow.
    #[remote]
    pub fn multi_wf(l: Vec<i64>, chunk: usize) -> rayfork::Result<Traced<Vec<i64>>> {
        top("multi_wf", rayfork::get(&level1::remote(l, chunk))?)
    }
}

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder().num_cpus(2).start()?;
    let l: Vec<i64> = (1..=6).collect();
    let chunk = 2;

    println!("== Nested dynamics: {l:?}, chunk size {chunk}");
    let r = rt.get(&nested_dynamics::multi_wf::remote(l.clone(), chunk))?;
    r.tree.print("", true, true);
    println!("result: {:?} ({} tasks)\n", r.value, r.tree.count());
    assert_eq!(r.value, l.iter().map(|a| a + 3).collect::<Vec<_>>());
    // multi_wf, level1, reduce, 3 x level2, 6 x (core_wf, step1, step2).
    assert_eq!(r.tree.count(), 3 + 3 + 6 * 3);

    println!("== Mixed parallelism: {l:?}, chunk size {chunk}");
    let r = rt.get(&mixed::multi_wf::remote(l.clone(), chunk))?;
    r.tree.print("", true, true);
    println!("result: {:?} ({} tasks)", r.value, r.tree.count());
    assert_eq!(r.value, l.iter().map(|a| a + 2).collect::<Vec<_>>());
    // multi_wf, level1, reduce, 3 x level2, 6 x mappable.
    assert_eq!(r.tree.count(), 3 + 3 + 6);
    Ok(())
}
