//! Pull and push images between an OCI distribution registry and cairn's layer store. A
//! client of the engine, like `image load`: layers stream from the registry into a spool
//! (`ROOT/spool`, resumable), are checked against their blob digest on the way, and are
//! imported with the config's DiffID; pushes re-create each layer byte for byte from the
//! store. See docs/registry.md.

mod auth;
mod client;
mod error;
mod helper;
mod manifest;
mod pull;
mod push;
mod reference;
mod spool;
mod stream;

pub use auth::{docker_config_path, from_docker_config, Credentials};
pub use client::{ClientOptions, Retry};
pub use error::RegistryError;
pub use manifest::Platform;
pub use pull::{hold_name, pull, Event, PullOptions, Pulled};
pub use push::{push, PushOptions, Pushed, Source as PushSource};
pub use reference::{Reference, Target};
pub use spool::Spool;
