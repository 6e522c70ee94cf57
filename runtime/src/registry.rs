//! The registry of remote functions: every `#[remote]` function, found by a stable name.
//!
//! Owns the link-time slice that the macro fills and the name lookup. Entries are built at
//! compile time; nothing registers at run time.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::protocol::{Id, Outcome};

/// What a worker needs to run one task: its arguments' bytes, in order.
pub struct Invocation<'a> {
    /// The encoded arguments.
    pub args: Vec<&'a [u8]>,
    /// The task's name, for error messages.
    pub name: &'a str,
    /// The task's id (its return object's id).
    pub task: Id,
    /// Argument ids whose references were moved to this worker (scheduler rule 13), dropped
    /// once the last argument is decoded (`decode_arg`), or after the call at the latest.
    pub moved: std::rc::Rc<std::cell::RefCell<Vec<Id>>>,
}

impl Invocation<'_> {
    /// Drops the moved argument references (once).
    pub fn release_moved(&self) {
        let moved = std::mem::take(&mut *self.moved.borrow_mut());
        if moved.is_empty() {
            return;
        }
        if let Ok(b) = crate::client::current() {
            for id in moved {
                b.ref_op(id, -1);
            }
        }
    }
}

/// One registered remote function.
pub struct RemoteFn {
    /// The stable name: `module_path!()::function` (a worker program of another crate finds it
    /// without the crate's segment, see `lookup`).
    pub name: &'static str,
    /// Decodes the arguments, calls the function, encodes its result.
    pub call: fn(Invocation<'_>) -> Outcome,
}

/// Every `#[remote]` function linked into this binary.
#[linkme::distributed_slice]
pub static REMOTE_FNS: [RemoteFn];

/// Functions every worker process runs once, before its first task (`rayfork::worker_init!`).
#[linkme::distributed_slice]
pub static WORKER_INITS: [fn()];

/// The name without its crate: `module::path::function`. An external worker program
/// (`Config::worker_program`) that includes the same modules as the driver registers the same
/// functions under another crate name; this is how it finds them.
fn without_crate(name: &str) -> &str {
    name.split_once("::").map_or(name, |(_, rest)| rest)
}

struct Index {
    exact: HashMap<&'static str, &'static RemoteFn>,
    /// By `without_crate` name; `None` when two functions share it (only exact names work).
    relative: HashMap<&'static str, Option<&'static RemoteFn>>,
}

/// Finds a function by its full name; failing that (a worker program built as another crate),
/// by its name without the crate, if exactly one function has it.
pub(crate) fn lookup(name: &str) -> Option<&'static RemoteFn> {
    static INDEX: OnceLock<Index> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut idx = Index {
            exact: HashMap::new(),
            relative: HashMap::new(),
        };
        for f in REMOTE_FNS.iter() {
            idx.exact.insert(f.name, f);
            idx.relative
                .entry(without_crate(f.name))
                .and_modify(|e| *e = None)
                .or_insert(Some(f));
        }
        idx
    });
    index
        .exact
        .get(name)
        .copied()
        .or_else(|| index.relative.get(without_crate(name)).copied().flatten())
}

#[cfg(test)]
mod tests {
    use super::without_crate;

    #[test]
    fn the_crate_is_the_first_segment() {
        assert_eq!(without_crate("driver::tasks::f::f"), "tasks::f::f");
        assert_eq!(without_crate("f"), "f");
    }
}
