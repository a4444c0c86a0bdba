//! Who a container's process runs as: the definition's `user` (or the image's USER) resolved
//! against the image's `/etc/passwd` and `/etc/group`, with runc's (and so Docker's) rules.
//! Pure: the caller reads the files.
//!
//! - `uid:gid` (both numbers): taken as is; the files are not needed.
//! - `name` or `uid` alone: the passwd entry gives the uid and the primary group. A name that
//!   is not there is an error, never root. A numeric uid that is not there runs with group 0,
//!   as Docker does.
//! - `…:group` with a group name: looked up in /etc/group; missing is an error.
//! - Supplementary groups: every /etc/group entry that lists the user's name as a member.

/// The user a container's process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, from /etc/group.
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("user {user:?} names a user, but the image has no /etc/passwd")]
    NoPasswd { user: String },
    #[error("user {user:?} names a group, but the image has no /etc/group")]
    NoGroupFile { user: String },
}

/// Whether resolving `user` needs the image's /etc/passwd and /etc/group (false for
/// `uid:gid`, which is taken as is).
pub fn needs_files(user: &str) -> bool {
    match user.split_once(':') {
        Some((u, g)) => u.parse::<u32>().is_err() || g.parse::<u32>().is_err(),
        None => !user.is_empty(),
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        (!name.is_empty() && !name.starts_with('#')).then_some(PasswdEntry { name, uid, gid })
    })
}

/// `(name, gid, members)` of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        (!name.is_empty() && !name.starts_with('#')).then_some((name, gid, members))
    })
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`; empty = root) against the image's
/// /etc/passwd and /etc/group (`None`: the image has no such file).
pub fn resolve(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, UserError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = passwd.and_then(|p| {
        let by_number = u.parse::<u32>().ok();
        passwd_entries(p).find(|e| match by_number {
            Some(n) => e.uid == n,
            None => e.name == u,
        })
    });
    let (uid, mut gid, name) = match (u.parse::<u32>(), &entry) {
        (_, Some(e)) => (e.uid, e.gid, Some(e.name)),
        (Ok(n), None) => (n, 0, None),
        (Err(_), None) if passwd.is_none() => {
            return Err(UserError::NoPasswd {
                user: user.to_owned(),
            })
        }
        (Err(_), None) => return Err(UserError::UnknownUser(u.to_owned())),
    };
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let Some(file) = group else {
                    return Err(UserError::NoGroupFile {
                        user: user.to_owned(),
                    });
                };
                group_entries(file)
                    .find(|(n, _, _)| *n == g)
                    .map(|(_, gid, _)| gid)
                    .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?
            }
        };
    }
    let mut additional_gids: Vec<u32> = match (name, group) {
        (Some(name), Some(file)) => group_entries(file)
            .filter(|(_, _, members)| members.contains(&name))
            .map(|(_, gid, _)| gid)
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1234:2345:the app:/home/app:/bin/sh\n\
        broken line\n\
        nobody:x:65534:65534:nobody:/:/bin/false\n";
    const GROUP: &str = "root:x:0:\napp:x:2345:\nextra:x:3456:app,other\nweb:x:80:\n";

    fn check(user: &str, expected: Result<(u32, u32, &[u32]), &str>) {
        let got = resolve(user, Some(PASSWD), Some(GROUP))
            .map(|r| (r.uid, r.gid, r.additional_gids))
            .map_err(|e| e.to_string());
        let expected = expected
            .map(|(u, g, extra)| (u, g, extra.to_vec()))
            .map_err(str::to_owned);
        assert_eq!(got, expected, "user {user:?}");
    }

    #[test]
    fn users_resolve_as_runc_resolves_them() {
        check("", Ok((0, 0, &[])));
        check("app", Ok((1234, 2345, &[3456])));
        check("1234", Ok((1234, 2345, &[3456])));
        check("app:web", Ok((1234, 80, &[3456])));
        check("app:3456", Ok((1234, 3456, &[])));
        check("nobody", Ok((65534, 65534, &[])));
        check("5000", Ok((5000, 0, &[])));
        check("5000:5000", Ok((5000, 5000, &[])));
        check(
            "ghost",
            Err("user \"ghost\" not found in the image's /etc/passwd"),
        );
        check(
            "app:ghosts",
            Err("group \"ghosts\" not found in the image's /etc/group"),
        );
    }

    #[test]
    fn missing_files_never_mean_root() {
        assert_eq!(
            resolve("app", None, None).map_err(|e| e.to_string()),
            Err("user \"app\" names a user, but the image has no /etc/passwd".to_owned())
        );
        assert_eq!(
            resolve("1000:web", Some(PASSWD), None).map_err(|e| e.to_string()),
            Err("user \"1000:web\" names a group, but the image has no /etc/group".to_owned())
        );
        assert_eq!(
            resolve("1000", None, None),
            Ok(ResolvedUser {
                uid: 1000,
                gid: 0,
                additional_gids: vec![]
            })
        );
        assert!(!needs_files("1000:1000"));
        assert!(needs_files("1000"));
        assert!(needs_files("app"));
        assert!(needs_files("1000:web"));
        assert!(!needs_files(""));
    }
}
