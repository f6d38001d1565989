//! Development entry point (before `cairn serve` exists in the CLI):
//! `serve ROOT ADDRESS [vfs|overlay]`.
fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CAIRN_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let (Some(root), Some(address)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: serve ROOT ADDRESS [vfs|overlay]");
        return std::process::ExitCode::from(2);
    };
    let mut options = cairn_server::ServeOptions::new(root.into());
    options.address = address.into();
    options.driver = match args.get(3).map(String::as_str) {
        Some("overlay") => Some(cairn::types::DriverKind::Overlay),
        Some("vfs") => Some(cairn::types::DriverKind::Vfs),
        _ => None,
    };
    match cairn_server::serve(options) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn serve: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
