fn main() -> std::process::ExitCode {
    sonicgw::cli::main()
}
