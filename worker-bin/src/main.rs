//! `rayfork-worker`: a standalone worker program for `Config::worker_program`.
//!
//! It runs the remote functions linked into it; a driver that uses it must register the same
//! functions under the same module paths (include the same modules of `#[remote]` functions in
//! both: names are matched without the crate's segment). tests/bin/worker.rs is an example.

fn main() {
    rayfork::worker::main()
}
