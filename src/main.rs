use std::process::ExitCode;

fn main() -> ExitCode {
    tinyllm::cli::main_with(std::env::args_os(), tinyllm::stages::builtin_registry())
}
