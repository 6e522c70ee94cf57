//! `rayfork-test-worker`: an external worker program (`Config::worker_program`) for the
//! integration tests. It registers the functions of `program_fns.rs` and nothing else.

#[path = "../program_fns.rs"]
#[allow(dead_code)]
mod program_fns;

fn main() {
    rayfork::worker::main()
}
