//! The `git-theta` binary; `git theta ...` runs it.

fn main() -> std::process::ExitCode {
    git_theta::main_with_args(std::env::args_os())
}
