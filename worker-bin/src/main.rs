//! `rayfork-worker`: a standalone worker program for `Config::worker_program`.
//!
//! It runs the remote functions linked into it; a driver that uses it must register the same
//! functions under the same names (link the same library of `#[remote]` functions into both).

fn main() {
    rayfork::worker::main()
}
