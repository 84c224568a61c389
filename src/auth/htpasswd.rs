//! The htpasswd file: `user:$2y$…` lines as `htpasswd -B` writes them (bcrypt only: MD5,
//! SHA-1, crypt and plain entries are refused with the line that holds them), reloaded when
//! the file changes. A failed reload keeps the users that were loaded before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Parsed users: name → bcrypt hash.
#[derive(Debug)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// Verified when the user is unknown, at the highest cost in the file, so "no such user"
    /// costs at least as much as a wrong password.
    dummy: String,
}

impl Users {
    /// Parse the file's text; the error names the line and what to fix.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        let mut cost = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {n} is not user:hash"));
            };
            if user.is_empty() || user.len() > 256 {
                return Err(format!("line {n}: the user name is empty or too long"));
            }
            let c = bcrypt_cost(hash).ok_or_else(|| {
                format!(
                    "line {n} ({user}): only bcrypt entries are accepted (write them with `htpasswd -B`)"
                )
            })?;
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {n}: user {user} appears twice"));
            }
            cost = cost.max(Some(c));
        }
        let dummy = bcrypt::hash(
            "airlock: a password nobody has",
            cost.unwrap_or(bcrypt::DEFAULT_COST),
        )
        .map_err(|e| format!("cannot make the reference hash: {e}"))?;
        Ok(Users { hashes, dummy })
    }

    /// Whether `password` is `user`'s (blocking: bcrypt takes milliseconds by design).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.hashes.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.dummy);
                false
            }
        }
    }

    /// Whether `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// The cost of a well-formed bcrypt hash (`$2a$`, `$2b$` or `$2y$`, 60 characters).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let ok_prefix = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    if !ok_prefix || hash.len() != 60 || hash.as_bytes()[6] != b'$' {
        return None;
    }
    let cost: u32 = hash[4..6].parse().ok()?;
    let salt_and_hash = &hash[7..];
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'/';
    ((4..=31).contains(&cost) && salt_and_hash.bytes().all(b64)).then_some(cost)
}

/// What identifies a version of the file on disk.
type Stamp = Option<(SystemTime, u64)>;

/// The htpasswd file and the users last loaded from it.
#[derive(Debug)]
pub struct HtpasswdFile {
    path: PathBuf,
    users: RwLock<Arc<Users>>,
    stamp: Mutex<Stamp>,
}

impl HtpasswdFile {
    /// Load `path`; the error says which file and what is wrong.
    pub fn load(path: &Path) -> Result<HtpasswdFile, String> {
        let stamp = stamp(path);
        let users = read(path)?;
        Ok(HtpasswdFile {
            path: path.to_path_buf(),
            users: RwLock::new(Arc::new(users)),
            stamp: Mutex::new(stamp),
        })
    }

    /// The users now in force.
    pub fn users(&self) -> Arc<Users> {
        self.users
            .read()
            .map(|u| u.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Read the file again if it changed since the last load (or if `force`). `Ok(true)`:
    /// new users are in force. On an error the users loaded before stay in force.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let now = stamp(&self.path);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *last == now {
                return Ok(false);
            }
            *last = now;
        }
        let users = read(&self.path)?;
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
        Ok(true)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read(path: &Path) -> Result<Users, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the htpasswd file {}: {e}", path.display()))?;
    Users::parse(&text).map_err(|e| format!("htpasswd file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, password: &str) -> String {
        format!("{user}:{}", bcrypt::hash(password, 4).unwrap())
    }

    #[test]
    fn bcrypt_entries_verify_and_nothing_else_does() {
        let text = format!(
            "# users\n\n{}\n{}\n",
            entry("alice", "s3cret"),
            entry("bob", "pw")
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "pw"));
        assert!(!users.verify("carol", "s3cret"));
        assert!(!users.verify("", ""));
        // htpasswd -B writes $2y$; the other bcrypt prefixes verify too.
        let y = bcrypt::hash_with_result("pw", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        assert!(y.starts_with("$2y$"));
        assert!(Users::parse(&format!("u:{y}")).unwrap().verify("u", "pw"));
    }

    #[test]
    fn entries_that_are_not_bcrypt_are_refused_by_line() {
        for (text, needle) in [
            ("alice:$apr1$abc$def", "line 1 (alice): only bcrypt"),
            ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "only bcrypt"),
            ("alice:plaintext", "only bcrypt"),
            ("\nalice", "line 2 is not user:hash"),
            (
                ":$2y$05$abcdefghijklmnopqrstuuCQ0xK3zb1bDRDz4N6zO4f0r0Qy9nC8e",
                "empty",
            ),
            ("alice:$2y$05$abc", "only bcrypt"),
            (
                "alice:$2y$99$abcdefghijklmnopqrstuuCQ0xK3zb1bDRDz4N6zO4f0r0Qy9nC8e",
                "only bcrypt",
            ),
        ] {
            let e = Users::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let twice = format!("{}\n{}", entry("a", "x"), entry("a", "y"));
        assert!(Users::parse(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn reload_takes_a_changed_file_and_keeps_the_old_users_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, entry("alice", "one")).unwrap();
        let f = HtpasswdFile::load(&path).unwrap();
        assert!(!f.reload(false).unwrap(), "unchanged");
        std::fs::write(
            &path,
            format!("{}\n{}", entry("alice", "two"), entry("bob", "b")),
        )
        .unwrap();
        assert!(f.reload(true).unwrap());
        assert!(f.users().verify("alice", "two"));
        std::fs::write(&path, "alice:plain").unwrap();
        assert!(f.reload(true).unwrap_err().contains("only bcrypt"));
        assert!(
            f.users().verify("alice", "two"),
            "the old users stay in force"
        );
    }
}
