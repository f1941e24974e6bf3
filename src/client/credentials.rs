//! The CLI's sign-in, kept between commands: `<config dir>/sonicgw/credentials.json`, mode 0600 in a
//! 0700 directory, written atomically (a temporary file renamed over the old one), so a crash never
//! leaves half a file and no other user can read the tokens.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What `sonicgw login` stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The gateway's base URL, without a trailing slash.
    pub server: String,
    pub username: String,
    #[serde(default)]
    pub tenant: Option<String>,
    /// Accept any TLS certificate (`login --insecure`); every command warns while this is on.
    #[serde(default)]
    pub insecure: bool,
    pub access_token: String,
    /// Unix seconds.
    pub access_expires_at: i64,
    /// Rotated at every refresh: the new one is saved before the access token is used.
    pub refresh_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("tenant", &self.tenant)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// Where the credentials live: `SONICGW_CREDENTIALS` when set, else under the user's configuration
/// directory (`$XDG_CONFIG_HOME`, `~/.config` on Linux).
pub fn default_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SONICGW_CREDENTIALS") {
        return Ok(PathBuf::from(path));
    }
    let dir = dirs::config_dir()
        .context("this system has no configuration directory; set SONICGW_CREDENTIALS")?;
    Ok(dir.join("sonicgw").join("credentials.json"))
}

/// The stored credentials; `None` when nobody is signed in. Like ssh with a private key, a file
/// someone else owns or could read is refused: its tokens may be someone else's, or known to others.
pub fn load(path: &Path) -> anyhow::Result<Option<Credentials>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            check_private_file(path)?;
            // Read like written: never from a folder where another user could have swapped the file.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                check_safe_dir(dir)?;
            }
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is damaged; run `sonicgw login` again", path.display())
            })?))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(unix)]
fn check_private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    anyhow::ensure!(
        meta.uid() == me,
        "{} belongs to another user (uid {}); refusing to use its tokens: remove it and run `sonicgw login`",
        path.display(),
        meta.uid()
    );
    anyhow::ensure!(
        meta.mode() & 0o077 == 0,
        "{} can be read by other users (mode {:o}); its tokens may be known to them: run `sonicgw logout`, \
         `chmod 600 {}` and `sonicgw login` again",
        path.display(),
        meta.mode() & 0o777,
        path.display()
    );
    Ok(())
}

#[cfg(not(unix))]
fn check_private_file(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Writes `credentials` to `path` atomically, readable by its owner only.
pub fn save(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the credentials path has no directory")?;
    create_private_dir(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    // NamedTempFile is created 0600 already; say so for the reader.
    set_owner_only(file.path(), 0o600)?;
    file.write_all(&serde_json::to_vec_pretty(credentials)?)?;
    file.as_file().sync_all()?;
    file.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Forgets the sign-in; no error when there was none.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// An exclusive lock beside the credentials, held while a refresh token is used: two commands run at
/// once must not both spend the same refresh token (the second use would revoke the sign-in).
pub fn lock(path: &Path) -> anyhow::Result<std::fs::File> {
    let dir = path
        .parent()
        .context("the credentials path has no directory")?;
    create_private_dir(dir)?;
    let lock_path = path.with_extension("lock");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    // Never through a symlink someone planted: the lock file is ours, made here.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NOFOLLOW).mode(0o600);
    }
    let file = options
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(file)
}

/// Makes `dir` (0700) when missing. An existing one is used only when no other user can swap the
/// files in it: it is ours (or root's), and not writable by others unless sticky (like /tmp).
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        set_owner_only(dir, 0o700)?;
    }
    check_safe_dir(dir)
}

#[cfg(unix)]
fn check_safe_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    anyhow::ensure!(
        meta.uid() == me || meta.uid() == 0,
        "{} belongs to another user (uid {}); keep the credentials in a folder of yours",
        dir.display(),
        meta.uid()
    );
    let sticky = meta.mode() & 0o1000 != 0;
    anyhow::ensure!(
        meta.mode() & 0o022 == 0 || sticky,
        "other users can change the files in {} (mode {:o}); run `chmod 700 {}`",
        dir.display(),
        meta.mode() & 0o777,
        dir.display()
    );
    Ok(())
}

#[cfg(not(unix))]
fn check_safe_dir(_dir: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn set_owner_only(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))
}

#[cfg(not(unix))]
fn set_owner_only(_path: &Path, _mode: u32) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credentials {
        Credentials {
            server: "https://gw.example".into(),
            username: "alice".into(),
            tenant: Some("acme".into()),
            insecure: false,
            access_token: "secret-access".into(),
            access_expires_at: 1,
            refresh_token: "secret-refresh".into(),
        }
    }

    #[test]
    fn saved_credentials_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sonicgw").join("credentials.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &sample()).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.refresh_token, "secret-refresh");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(load(&path).unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_lock_file_is_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "x").unwrap();
        let creds = dir.path().join("c.json");
        std::os::unix::fs::symlink(&victim, dir.path().join("c.lock")).unwrap();
        assert!(lock(&creds).is_err());
        assert!(lock(&dir.path().join("d.json")).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn credentials_others_can_read_or_a_folder_others_can_change_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("sonicgw");
        let path = folder.join("credentials.json");
        save(&path, &sample()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = load(&path).err().unwrap().to_string();
        assert!(refused.contains("mode 644"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path).unwrap().is_some());
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = save(&path, &sample()).err().unwrap().to_string();
        assert!(refused.contains("chmod 700"), "{refused}");
        // Reading from that folder is refused too: the file there may not be the one we wrote.
        let refused = load(&path).err().unwrap().to_string();
        assert!(refused.contains("chmod 700"), "{refused}");
        // A shared sticky folder (like /tmp) is fine: nobody else can replace our files there.
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o1777)).unwrap();
        save(&path, &sample()).unwrap();
    }

    #[test]
    fn debug_never_shows_a_token() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("secret"), "{shown}");
    }
}
