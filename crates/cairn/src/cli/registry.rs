//! `cairn pull REF` and `cairn push NAME REF`: images to and from an OCI registry
//! (docs/registry.md).

use super::error::{CliError, ErrorKind};
use super::Ctx;
use cairn_registry::{
    ClientOptions, Credentials, Event, Platform, PullOptions, PushOptions, RegistryError,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// How to reach the registry: shared by pull and push.
#[derive(Debug, clap::Args)]
pub struct Access {
    /// User name for the registry (the password comes from --password-stdin).
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password (or token) from the first line of standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Allow plain HTTP to a registry that is not on loopback.
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// HOST[:PORT]/REPO[:TAG|@DIGEST]
    reference: String,
    /// The platform an image index is resolved for: OS/ARCH[/VARIANT] (default: this host's).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Blobs fetched at once.
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u8).range(1..=16))]
    jobs: u8,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The image in the store (`cairn image ls`).
    name: String,
    /// HOST[:PORT]/REPO[:TAG|@DIGEST]
    reference: String,
    /// A repository on the same registry to mount existing blobs from.
    #[arg(long, value_name = "REPO")]
    mount_from: Option<String>,
    #[command(flatten)]
    access: Access,
}

fn registry_error(e: RegistryError) -> CliError {
    use RegistryError as R;
    let kind = match &e {
        R::Engine(_) | R::Image(_) => {
            return match e {
                R::Engine(e) => e.into(),
                R::Image(e) => e.into(),
                _ => CliError::new(ErrorKind::Other, e.to_string()),
            }
        }
        R::BadReference { .. } | R::Insecure { .. } => ErrorKind::InvalidArgument,
        R::NotFound { .. } | R::NoImage { .. } | R::NoPlatform { .. } => ErrorKind::NotFound,
        R::Unauthorized { .. } | R::Denied { .. } => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    };
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let part = s.to_string();
        if !message.contains(&part) {
            message.push_str(": ");
            message.push_str(&part);
        }
        source = s.source();
    }
    CliError::new(kind, message)
}

fn client_options(ctx: &Ctx, access: &Access, reference: &str) -> Result<ClientOptions, CliError> {
    let credentials = if let Some(username) = &access.username {
        let password = match (&ctx.password, &ctx.engine) {
            (Some(p), _) => p.clone(),
            // Inside `cairn serve` without the client's line: never read the server's stdin.
            (None, Some(_)) => return Err(CliError::invalid(
                "--password-stdin: no password came with the command through cairn serve's socket",
            )),
            (None, None) => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        Some(Credentials {
            username: username.clone(),
            password,
        })
    } else {
        let host = cairn_registry::Reference::parse(reference)
            .map_err(registry_error)?
            .host;
        match cairn_registry::docker_config_path() {
            Some(path) => {
                cairn_registry::from_docker_config(&path, &host).map_err(registry_error)?
            }
            None => None,
        }
    };
    Ok(ClientOptions {
        credentials,
        insecure: access.insecure,
        ..ClientOptions::default()
    })
}

/// One bar per layer on a terminal; nothing otherwise.
struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<Vec<ProgressBar>>,
}

impl Bars {
    fn new(json: bool) -> Bars {
        let multi = (!json && std::io::stderr().is_terminal()).then(MultiProgress::new);
        Bars {
            multi,
            bars: Mutex::new(Vec::new()),
        }
    }

    fn event(&self, event: Event<'_>) {
        let Some(multi) = &self.multi else { return };
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Layer {
                index,
                count,
                digest,
                size_bytes,
                present,
            } => {
                let bar = multi.add(ProgressBar::new(size_bytes));
                if let Ok(style) = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                let short: String = digest.chars().skip(7).take(12).collect();
                bar.set_message(format!("layer {}/{count} {short}", index + 1));
                if present {
                    bar.finish_with_message(format!("layer {}/{count} {short} present", index + 1));
                }
                bars.push(bar);
            }
            Event::Bytes { index, bytes } => {
                if let Some(bar) = bars.get(index) {
                    bar.inc(bytes);
                }
            }
            Event::Imported { index } => {
                if let Some(bar) = bars.get(index) {
                    bar.finish();
                }
            }
        }
    }
}

pub fn pull(ctx: &Ctx, args: PullArgs) -> Result<(), CliError> {
    let platform = match &args.platform {
        Some(p) => Some(Platform::parse(p).ok_or_else(|| {
            CliError::invalid(format!("--platform {p:?} is not OS/ARCH[/VARIANT]"))
        })?),
        None => None,
    };
    let options = PullOptions {
        client: client_options(ctx, &args.access, &args.reference)?,
        platform,
        jobs: usize::from(args.jobs),
        root: ctx.root.clone(),
    };
    let bars = Bars::new(ctx.out.json);
    let pulled = ctx.with_engine(|e| {
        cairn_registry::pull(e, &args.reference, &options, &|ev| bars.event(ev))
            .map_err(registry_error)
    });
    if let Some(multi) = &bars.multi {
        let _ = multi.clear();
    }
    let pulled = pulled?;
    ctx.out.result(&pulled, || {
        ctx.out.line(&format!(
            "pulled {}: {} layers ({} already present), {} bytes fetched, top {}",
            pulled.name,
            pulled.layers.len(),
            pulled.present,
            pulled.fetched_bytes,
            pulled.top
        ))
    })
}

pub fn push(ctx: &Ctx, args: PushArgs) -> Result<(), CliError> {
    let options = PushOptions {
        client: client_options(ctx, &args.access, &args.reference)?,
        root: ctx.root.clone(),
        mount_from: args.mount_from.clone(),
    };
    let bar = super::progress::bytes(ctx.out.json, 0, "push");
    let pushed = ctx.with_engine(|e| {
        cairn_registry::push(e, &args.name, &args.reference, &options, &|m| {
            bar.set_message(m.to_owned())
        })
        .map_err(registry_error)
    });
    bar.finish_and_clear();
    let pushed = pushed?;
    ctx.out.result(&pushed, || {
        ctx.out.line(&format!(
            "pushed {} to {}: {} layers, {} bytes uploaded, manifest {}",
            pushed.name,
            pushed.reference,
            pushed.layers.len(),
            pushed.uploaded_bytes,
            pushed.manifest_digest
        ))
    })
}
