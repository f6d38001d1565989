//! Development stand-in for `cairn serve`, with the same flags:
//! `serve --root DIR [--driver vfs|overlay] serve --address PATH`.
fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CAIRN_LOG"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut options = cairn_server::ServeOptions::new(flag("--root").unwrap_or_default().into());
    if let Some(a) = flag("--address") {
        options.address = a.into();
    }
    options.driver = match flag("--driver").as_deref() {
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
