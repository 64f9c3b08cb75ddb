//! What a dataset spec can reach. A spec comes from an editor, not from the operator, so what it
//! names is read only inside the fence the operator set:
//!
//! - `local`: local files only under the data roots, never Carga's own key, secrets or state, nor
//!   `/proc`, `/sys`, `/dev`; paths resolved (symlinks, `..`, `file://`) before the check, and the
//!   opened file checked again.
//! - `network`: REST and http(s) sources may reach loopback, link-local and private addresses
//!   only when the settings allow it; names are resolved and checked before connecting, so DNS
//!   cannot rebind around the check.
//!
//! Where credentials may go (the hosts a connection names) is the secret's rule:
//! `secrets::ConnectionSecret::may_send_to`.

pub mod local;
pub mod network;

use std::path::{Path, PathBuf};

use carga_config::{S3Settings, Settings};

pub use local::LocalRoots;
pub use network::NetworkPolicy;

/// The fence for one process: where local files may be read, which networks may be reached, and
/// the S3 endpoint `s3://` sources use.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    pub s3: S3Settings,
    pub local: LocalRoots,
    pub network: NetworkPolicy,
    /// Files uploaded through the API (`upload://<id>`): the bucket's upload area and the key
    /// its bytes are sealed with; `None` where this process has neither.
    pub uploads: Option<crate::upload::UploadArea>,
}

impl AccessPolicy {
    /// The policy the settings describe, with `default_roots` where the settings name none and
    /// `default_private` as the private-network rule where they say nothing. The key file, the
    /// secrets file, a local bucket and `state_dirs` are protected whatever the roots.
    pub fn from_settings(
        settings: &Settings,
        default_roots: &[PathBuf],
        default_private: bool,
        state_dirs: &[&Path],
    ) -> Self {
        let roots = settings
            .sources
            .local_roots
            .clone()
            .unwrap_or_else(|| default_roots.to_vec());
        let mut local = LocalRoots::new(roots)
            .protect(&settings.key_file, "the master key file")
            .protect(&settings.secrets_file, "the secrets file");
        if !settings.bucket.contains("://") || settings.bucket.starts_with("file://") {
            let bucket = settings.bucket.trim_start_matches("file://");
            local = local.protect(Path::new(bucket), "the raw-zone bucket");
        }
        for dir in state_dirs {
            local = local.protect(dir, "Carga's state folder");
        }
        Self {
            s3: settings.s3.clone(),
            local,
            network: NetworkPolicy {
                allow_private: settings
                    .sources
                    .allow_private_networks
                    .unwrap_or(default_private),
            },
            uploads: None,
        }
    }

    /// The policy of a one-shot command on the user's own machine (`carga run`, `preview`):
    /// the spec's folder and the working directory, any network, unless the settings say more.
    pub fn for_command(settings: &Settings, spec_path: Option<&Path>) -> Self {
        let mut roots = Vec::new();
        if let Some(dir) = spec_path.and_then(Path::parent) {
            roots.push(if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_owned()
            });
        }
        roots.push(PathBuf::from("."));
        Self::from_settings(settings, &roots, true, &[])
    }

    /// The policy of a server: only the roots the settings (or `roots`) name, no private
    /// networks unless the settings allow them.
    pub fn for_server(settings: &Settings, roots: &[PathBuf], state_dirs: &[&Path]) -> Self {
        Self::from_settings(settings, roots, false, state_dirs)
    }

    /// Everything readable and reachable (library tests of the sources themselves).
    pub fn unrestricted(s3: S3Settings) -> Self {
        Self {
            s3,
            local: LocalRoots::new([PathBuf::from("/")]),
            network: NetworkPolicy {
                allow_private: true,
            },
            uploads: None,
        }
    }
}
