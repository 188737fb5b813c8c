//! Checkpoints on the Hugging Face hub: `hf://owner/repo[/file][@rev]` references and (with the
//! `hub` feature) fetching them through the local hub cache.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A checkpoint on the Hugging Face hub, written `hf://owner/repo[/file][@rev]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/repo`.
    pub repo: String,
    /// Path of the checkpoint in the repository (`None`: [`HubRef::DEFAULT_FILE`]).
    pub file: Option<String>,
    /// Branch, tag or commit (`None`: `main`).
    pub revision: Option<String>,
}

impl HubRef {
    /// The URL scheme of hub references.
    pub const SCHEME: &'static str = "hf://";
    /// The file fetched when a reference names none.
    pub const DEFAULT_FILE: &'static str = "model.safetensors";

    /// Whether `s` is meant as a hub reference (starts with `hf://`).
    pub fn is_hub_ref(s: &str) -> bool {
        s.starts_with(Self::SCHEME)
    }

    /// Parses `hf://owner/repo[/file][@rev]`; the revision is what follows the first `@`.
    pub fn parse(input: &str) -> Result<Self> {
        let err = |reason: &str| Error::HubRef {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let rest = input
            .strip_prefix(Self::SCHEME)
            .ok_or_else(|| err("expected `hf://owner/repo[/file][@rev]`"))?;
        let (path, revision) = match rest.split_once('@') {
            Some((_, "")) => return Err(err("empty revision after `@`")),
            Some((path, rev)) => (path, Some(rev.to_string())),
            None => (rest, None),
        };
        let mut parts = path.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name = parts.next().unwrap_or_default();
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(owner) || !valid(name) {
            return Err(err(
                "expected `owner/repo` (letters, digits, `-`, `_`, `.`) after `hf://`",
            ));
        }
        let file = match parts.next() {
            None => None,
            Some(f) if f.is_empty() || f.split('/').any(|s| s.is_empty() || s == "..") => {
                return Err(err("empty or `..` path segment in the file name"))
            }
            Some(f) => Some(f.to_string()),
        };
        Ok(Self {
            repo: format!("{owner}/{name}"),
            file,
            revision,
        })
    }

    /// The file to fetch: `file` or [`HubRef::DEFAULT_FILE`].
    pub fn file(&self) -> &str {
        self.file.as_deref().unwrap_or(Self::DEFAULT_FILE)
    }

    /// The path of the file in the local hub cache, downloading it when it is not there.
    ///
    /// The cache is read first (no network access when the file is cached); with
    /// `HF_HUB_OFFLINE=1` a file missing from the cache is an error instead of a download.
    /// `cache_dir` overrides the cache directory (default: `HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    #[cfg(feature = "hub")]
    pub fn fetch(&self, cache_dir: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
        let hub = |e: hf_hub::HFError| Error::Hub(format!("{self}: {e}"));
        let mut builder = hf_hub::HFClient::builder();
        if let Some(dir) = cache_dir {
            builder = builder.cache_dir(dir);
        }
        let client = builder.build_sync().map_err(hub)?;
        let (owner, name) = self.repo.split_once('/').unwrap_or(("", &self.repo));
        let repo = client.model(owner, name);
        let cached = repo
            .download_file()
            .filename(self.file())
            .maybe_revision(self.revision.clone())
            .local_files_only(true)
            .send();
        match cached {
            Ok(path) => return Ok(path),
            Err(hf_hub::HFError::LocalEntryNotFound { .. }) => {}
            Err(e) => return Err(hub(e)),
        }
        if offline() {
            return Err(Error::Hub(format!(
                "{self} is not in the hub cache and HF_HUB_OFFLINE is set"
            )));
        }
        repo.download_file()
            .filename(self.file())
            .maybe_revision(self.revision.clone())
            .send()
            .map_err(hub)
    }
}

/// Whether `HF_HUB_OFFLINE` asks for no network access (`1`, `true`, `yes`, `on`).
#[cfg(feature = "hub")]
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

impl FromStr for HubRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::SCHEME, self.repo)?;
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        if let Some(rev) = &self.revision {
            write!(f, "@{rev}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(repo: &str, file: Option<&str>, rev: Option<&str>) -> HubRef {
        HubRef {
            repo: repo.into(),
            file: file.map(Into::into),
            revision: rev.map(Into::into),
        }
    }

    #[test]
    fn parses_hub_references() {
        for (s, want) in [
            ("hf://a/b", r("a/b", None, None)),
            ("hf://a/b@v1", r("a/b", None, Some("v1"))),
            (
                "hf://o-x/m_y.z/best.safetensors",
                r("o-x/m_y.z", Some("best.safetensors"), None),
            ),
            (
                "hf://a/b/runs/x/model.safetensors@refs/pr/1",
                r("a/b", Some("runs/x/model.safetensors"), Some("refs/pr/1")),
            ),
        ] {
            let got = HubRef::parse(s).unwrap();
            assert_eq!(got, want, "{s}");
            assert_eq!(got.to_string(), s);
            assert_eq!(s.parse::<HubRef>().unwrap(), want);
        }
        assert_eq!(
            HubRef::parse("hf://a/b").unwrap().file(),
            "model.safetensors"
        );
        assert!(HubRef::is_hub_ref("hf://a/b") && !HubRef::is_hub_ref("runs/a/b"));
    }

    #[test]
    fn rejects_bad_references() {
        for s in [
            "",
            "a/b",
            "hf:/a/b",
            "hf://",
            "hf://a",
            "hf://a/",
            "hf:///b",
            "hf://a/b/",
            "hf://a/b@",
            "hf://a/b//f",
            "hf://a/b/../f",
            "hf://a b/c",
            "https://a/b",
        ] {
            let err = HubRef::parse(s).unwrap_err();
            assert!(matches!(err, Error::HubRef { .. }), "{s}: {err}");
            assert!(err.to_string().contains(s), "{err}");
        }
    }
}
