//! The `graft` command line. Library errors become one `error: ...` line and exit code 1;
//! usage errors exit with 2.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
