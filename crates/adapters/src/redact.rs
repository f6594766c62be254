//! URLs as messages and logs show them: with any password hidden. Every
//! adapter that names its server (database, Redis, SMTP) goes through here.

/// The URL with any password replaced by `***`: the one in the user-info
/// part (`postgres://user:secret@host/db`) and a `password=` parameter.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let authority_start = scheme_end + "://".len();
    let rest = &url[authority_start..];
    let before_query = &rest[..rest.find('?').unwrap_or(rest.len())];
    let mut redacted = url[..authority_start].to_owned();
    // The last '@' before the query ends the user info, even if an
    // unencoded password holds '/' or '@'.
    let tail = match before_query.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    redacted.push_str(user);
                    redacted.push_str(":***");
                }
                None => redacted.push_str(userinfo),
            }
            &rest[at..]
        }
        None => rest,
    };
    redacted.push_str(&redact_query(tail));
    redacted
}

fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            if key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword") {
                format!("{key}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://me:hunter2@db:5432/app"),
            "postgres://me:***@db:5432/app"
        );
        assert_eq!(redact_url("postgres://me@db/app"), "postgres://me@db/app");
        assert_eq!(
            redact_url("postgres://me:a/b@c@db/app"),
            "postgres://me:***@db/app"
        );
        assert_eq!(
            redact_url("postgres://db/app?user=me&password=hunter2&sslmode=require"),
            "postgres://db/app?user=me&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite://data/a.db?mode=rwc"),
            "sqlite://data/a.db?mode=rwc"
        );
        assert_eq!(redact_url("sqlite:a.db"), "sqlite:a.db");
    }
}
