//! Where the CLI connects and as whom: the servers, the cluster CA it trusts and the API token
//! it sends, from the command line, the environment and a credentials file.
//!
//! Precedence, first found wins:
//! - file: `--credentials FILE`, `BERTH_CREDENTIALS`, `~/.config/berth/admin.toml` (only if it
//!   exists; a file named explicitly must exist);
//! - token: `--token`, `BERTH_TOKEN`, the file's `token`;
//! - servers: `--server`, `BERTH_SERVER`, the file's `servers`, `127.0.0.1:7400`;
//! - CA: the file's `ca` only.
//!
//! The CLI never presents a client certificate: the token alone says who the caller is.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The server asked when none is named anywhere.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7400";

/// Where `berth dev` writes the admin credentials, relative to the home directory.
const DEFAULT_FILE: &str = ".config/berth/admin.toml";

const HOW_TO_GET: &str = "`berth dev` writes ~/.config/berth/admin.toml, a bootstrap server \
writes DATA_DIR/admin.toml (copy it to ~/.config/berth/admin.toml or name it with \
--credentials FILE / BERTH_CREDENTIALS), and an admin can create a token with `berth token create`";

/// A credentials file (TOML), as a bootstrap server and `berth dev` write it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CredentialsFile {
    /// `host:port` of the cluster's servers.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The cluster CA's certificate, PEM.
    #[serde(default)]
    pub ca: Option<String>,
    /// An API token, `berth_<id>_<secret>`.
    #[serde(default)]
    pub token: Option<String>,
}

impl CredentialsFile {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read credentials file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("credentials file {}", path.display()))
    }
}

/// What the command line said; the environment and the file fill in the rest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags<'a> {
    pub servers: &'a [String],
    pub credentials: Option<&'a Path>,
    pub token: Option<&'a str>,
}

/// Where to connect and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub servers: Vec<String>,
    /// The cluster CA's certificate, PEM: the only root the CLI trusts.
    pub ca: String,
    /// The API token, checked to look like one.
    pub token: String,
    /// The credentials file read, if any (for messages).
    pub file: Option<PathBuf>,
}

impl Access {
    /// Resolves flags, the process environment and the credentials file.
    pub fn resolve(flags: Flags<'_>) -> anyhow::Result<Self> {
        Self::resolve_with(flags, &|name| std::env::var(name).ok())
    }

    /// [`Access::resolve`] with `env` in place of the process environment (`BERTH_*`, `HOME`).
    pub fn resolve_with(
        flags: Flags<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let file_path = match flags.credentials {
            Some(path) => Some(path.to_owned()),
            None => match var("BERTH_CREDENTIALS") {
                Some(path) => Some(PathBuf::from(path)),
                None => var("HOME")
                    .map(|home| Path::new(&home).join(DEFAULT_FILE))
                    .filter(|p| p.exists()),
            },
        };
        let file = file_path
            .as_deref()
            .map(CredentialsFile::read)
            .transpose()?
            .unwrap_or_default();
        let in_file = |key: &str| match &file_path {
            Some(p) => format!("`{key}` of {}", p.display()),
            None => format!("`{key}` of a credentials file"),
        };

        let servers = if !flags.servers.is_empty() {
            flags.servers.to_vec()
        } else if let Some(list) = var("BERTH_SERVER") {
            list.split(',').map(|s| s.trim().to_owned()).collect()
        } else if !file.servers.is_empty() {
            file.servers.clone()
        } else {
            vec![DEFAULT_SERVER.to_owned()]
        };
        let servers: Vec<String> = servers.into_iter().filter(|s| !s.is_empty()).collect();

        let ca = file.ca.filter(|ca| !ca.trim().is_empty());
        let Some(ca) = ca else {
            match &file_path {
                Some(p) => anyhow::bail!(
                    "credentials file {} has no `ca` (the cluster CA certificate); {HOW_TO_GET}",
                    p.display()
                ),
                None => anyhow::bail!(
                    "no credentials: the CLI needs the cluster CA certificate and a token; {HOW_TO_GET}"
                ),
            }
        };

        let (token, from) = if let Some(t) = flags.token.filter(|t| !t.trim().is_empty()) {
            (t.to_owned(), "--token".to_owned())
        } else if let Some(t) = var("BERTH_TOKEN") {
            (t, "BERTH_TOKEN".to_owned())
        } else if let Some(t) = file.token.filter(|t| !t.trim().is_empty()) {
            (t, in_file("token"))
        } else {
            anyhow::bail!(
                "no API token: give --token / BERTH_TOKEN, or add `token` to {}; {HOW_TO_GET}",
                file_path
                    .as_deref()
                    .map_or("a credentials file".to_owned(), |p| p.display().to_string())
            );
        };
        let token = berth_tls::ApiToken::parse(&token)
            .with_context(|| format!("the token of {from}"))?
            .to_string();
        Ok(Self {
            servers,
            ca,
            token,
            file: file_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn token(c: char) -> String {
        format!(
            "berth_{}_{}",
            c.to_string().repeat(16),
            c.to_string().repeat(64)
        )
    }

    /// A home directory with `~/.config/berth/admin.toml` holding `text`, when given.
    fn home(text: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(text) = text {
            let file = dir.path().join(DEFAULT_FILE);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, text).expect("write");
        }
        dir
    }

    fn file_text(servers: &[&str], token: &str) -> String {
        format!("servers = {servers:?}\nca = '''\n{CA}'''\ntoken = \"{token}\"\n")
    }

    fn resolve(flags: Flags<'_>, env: &[(&str, &str)]) -> anyhow::Result<Access> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Access::resolve_with(flags, &|name| env.get(name).cloned())
    }

    #[test]
    fn a_file_as_bootstrap_writes_it_parses() {
        let text = file_text(&["10.0.0.1:7400", "10.0.0.2:7400"], &token('a'));
        let file = CredentialsFile::parse(&text).expect("parses");
        assert_eq!(
            file,
            CredentialsFile {
                servers: vec!["10.0.0.1:7400".into(), "10.0.0.2:7400".into()],
                ca: Some(CA.into()),
                token: Some(token('a')),
            }
        );
        assert_eq!(
            CredentialsFile::parse("").expect("empty"),
            CredentialsFile::default()
        );
        let err = CredentialsFile::parse("servers = \"10.0.0.1:7400\"\n").unwrap_err();
        assert!(err.to_string().contains("servers"), "{err}");
    }

    #[test]
    fn the_default_file_serves_when_nothing_is_named() {
        let home = home(Some(&file_text(&["10.0.0.1:7400"], &token('a'))));
        let h = home.path().display().to_string();
        let access = resolve(Flags::default(), &[("HOME", &h)]).expect("resolves");
        assert_eq!(
            access,
            Access {
                servers: vec!["10.0.0.1:7400".into()],
                ca: CA.into(),
                token: token('a'),
                file: Some(home.path().join(DEFAULT_FILE)),
            }
        );
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let home = home(Some(&file_text(&["10.0.0.1:7400"], &token('a'))));
        let h = home.path().display().to_string();
        let (t_env, t_flag) = (token('b'), token('c'));
        let env = [
            ("HOME", h.as_str()),
            ("BERTH_TOKEN", t_env.as_str()),
            ("BERTH_SERVER", "10.0.0.2:7400, 10.0.0.3:7400"),
        ];
        let access = resolve(Flags::default(), &env).expect("resolves");
        assert_eq!(access.token, t_env);
        assert_eq!(access.servers, ["10.0.0.2:7400", "10.0.0.3:7400"]);
        let servers = ["10.0.0.4:7400".to_owned()];
        let flags = Flags {
            servers: &servers,
            token: Some(&t_flag),
            credentials: None,
        };
        let access = resolve(flags, &env).expect("resolves");
        assert_eq!((access.token, access.servers), (t_flag, servers.to_vec()));
        // An empty variable counts as unset.
        let access = resolve(
            Flags::default(),
            &[("HOME", &h), ("BERTH_TOKEN", ""), ("BERTH_SERVER", "")],
        )
        .expect("resolves");
        assert_eq!(
            (access.token, access.servers),
            (token('a'), vec!["10.0.0.1:7400".to_owned()])
        );
    }

    #[test]
    fn a_named_file_beats_the_default_one() {
        let home = home(Some(&file_text(&["10.0.0.1:7400"], &token('a'))));
        let h = home.path().display().to_string();
        let other = home.path().join("team.toml");
        std::fs::write(&other, file_text(&[], &token('d'))).expect("write");
        let o = other.display().to_string();
        let access =
            resolve(Flags::default(), &[("HOME", &h), ("BERTH_CREDENTIALS", &o)]).expect("env");
        assert_eq!(access.token, token('d'));
        assert_eq!(access.servers, [DEFAULT_SERVER], "no servers in the file");
        assert_eq!(access.file.as_deref(), Some(other.as_path()));
        let flags = Flags {
            credentials: Some(&other),
            ..Flags::default()
        };
        let access = resolve(flags, &[("HOME", &h)]).expect("flag");
        assert_eq!(access.token, token('d'));
        // A file named explicitly must exist.
        let missing = home.path().join("missing.toml");
        let flags = Flags {
            credentials: Some(&missing),
            ..Flags::default()
        };
        let err = resolve(flags, &[("HOME", &h)]).unwrap_err();
        assert!(
            format!("{err:#}")
                .starts_with(&format!("read credentials file {}: ", missing.display())),
            "{err:#}"
        );
    }

    #[test]
    fn without_a_ca_the_error_says_how_to_get_credentials() {
        let home = home(None);
        let h = home.path().display().to_string();
        let t = token('a');
        let err = resolve(Flags::default(), &[("HOME", &h), ("BERTH_TOKEN", &t)]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("no credentials: "), "{text}");
        for hint in ["berth dev", "DATA_DIR/admin.toml", "--credentials FILE"] {
            assert!(text.contains(hint), "{hint}: {text}");
        }
        let err = resolve(Flags::default(), &[]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("no credentials: "),
            "{err:#}"
        );
    }

    #[test]
    fn a_token_must_be_present_and_look_like_one() {
        let home = home(Some(&format!("ca = '''\n{CA}'''\n")));
        let h = home.path().display().to_string();
        let err = resolve(Flags::default(), &[("HOME", &h)]).unwrap_err();
        assert!(format!("{err:#}").starts_with("no API token: "), "{err:#}");
        let err = resolve(
            Flags::default(),
            &[("HOME", &h), ("BERTH_TOKEN", "hunter2")],
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("the token of BERTH_TOKEN: "), "{text}");
        assert!(!text.contains("hunter2"), "never echo a secret: {text}");
        let padded = format!("  {}\n", token('e'));
        let flags = Flags {
            token: Some(&padded),
            ..Flags::default()
        };
        assert_eq!(
            resolve(flags, &[("HOME", &h)]).expect("trimmed").token,
            token('e')
        );
    }
}
