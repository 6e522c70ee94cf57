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
}

/// One registered remote function.
pub struct RemoteFn {
    /// The stable name: `module_path!()::function`.
    pub name: &'static str,
    /// Decodes the arguments, calls the function, encodes its result.
    pub call: fn(Invocation<'_>) -> Outcome,
}

/// Every `#[remote]` function linked into this binary.
#[linkme::distributed_slice]
pub static REMOTE_FNS: [RemoteFn];

/// Finds a function by name.
pub(crate) fn lookup(name: &str) -> Option<&'static RemoteFn> {
    static INDEX: OnceLock<HashMap<&'static str, &'static RemoteFn>> = OnceLock::new();
    INDEX
        .get_or_init(|| REMOTE_FNS.iter().map(|f| (f.name, f)).collect())
        .get(name)
        .copied()
}
