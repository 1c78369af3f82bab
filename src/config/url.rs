//! Credentials in URLs: found, so the config can refuse them, and hidden wherever a URL is
//! shown.
//!
//! `https://user:pass@host/` looks like a convenient way to give the collector a password
//! (ureq sends it as Basic auth), but a URL is printed everywhere: `rackhand check`, the
//! log, `status.json`, the dead-letter file, every delivery error. So the config refuses
//! userinfo in `[upstream] url` and `broker` (secrets go in headers with `{env:NAME}`, or
//! the mqtt `username`/`password_env` keys), and every place that shows a URL passes it
//! through [`redact`] (or, for text a library wrote, [`redact_in`]) first, so a URL that
//! gets past the check (a proxy variable from the environment, a future key) still prints
//! as `https://***@host/`.

use std::borrow::Cow;
use std::ops::Range;

/// What stands in for the userinfo of a URL that is shown.
pub const HIDDEN: &str = "***";

/// The byte range of the userinfo (`user:pass`, without the `@`) of `url`, if it has one.
pub fn userinfo(url: &str) -> Option<Range<usize>> {
    let start = authority_start(url, 0)?;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    userinfo_in(start, &rest[..end])
}

/// `url` as it may be shown: its userinfo, if any, replaced by [`HIDDEN`].
pub fn redact(url: &str) -> Cow<'_, str> {
    match userinfo(url) {
        Some(range) => Cow::Owned(format!(
            "{}{HIDDEN}{}",
            &url[..range.start],
            &url[range.end..]
        )),
        None => Cow::Borrowed(url),
    }
}

/// `text` (an error message from a library, say) with the userinfo of every URL in it
/// replaced by [`HIDDEN`]. A URL in text ends at whitespace or a quote as well.
pub fn redact_in(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    // Each turn moves past one `://`: bounded by the text's length.
    while let Some(found) = text[from..].find("://") {
        let separator = from + found;
        from = separator + 3;
        let Some(start) = authority_start(text, separator) else {
            continue;
        };
        let rest = &text[start..];
        let end = rest
            .find(|c: char| "/?#\"'`<>".contains(c) || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(range) = userinfo_in(start, &rest[..end]) {
            out.push_str(&text[copied..range.start]);
            out.push_str(HIDDEN);
            copied = range.end;
        }
        from = start + end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Where the authority begins, for the `://` at or after `at` that follows a scheme
/// (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, RFC 3986).
fn authority_start(text: &str, at: usize) -> Option<usize> {
    let separator = at + text[at..].find("://")?;
    let scheme_start = text[..separator]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .map_or(0, |i| i + 1);
    let scheme = &text[scheme_start..separator];
    if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    Some(separator + 3)
}

/// The userinfo of an authority at `offset`: everything before its last `@` (a password
/// written with an unescaped `@` stays hidden whole).
fn userinfo_in(offset: usize, authority: &str) -> Option<Range<usize>> {
    let at = authority.rfind('@')?;
    (at > 0).then(|| offset..offset + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_found_in_the_authority_only() {
        let url = "https://user:pass@collector.example/ingest";
        assert_eq!(&url[userinfo(url).unwrap()], "user:pass");
        let url = "mqtts://rackhand@[2001:db8::1]:8883";
        assert_eq!(&url[userinfo(url).unwrap()], "rackhand");
        // An `@` in the path or query is not userinfo.
        assert_eq!(userinfo("https://collector.example/users/@me?by=a@b"), None);
        assert_eq!(userinfo("https://collector.example:8443/ingest"), None);
        assert_eq!(userinfo("/var/lib/rackhand/outbox"), None);
        assert_eq!(userinfo("not a url@all"), None);
    }

    #[test]
    fn a_url_with_credentials_is_shown_without_them() {
        let cases = [
            ("https://user:pass@host/", "https://***@host/"),
            (
                "http://user:p%40ss@host:8080/ingest",
                "http://***@host:8080/ingest",
            ),
            ("https://user:p@ss@host/", "https://***@host/"),
            ("https://token@host", "https://***@host"),
            ("mqtt://user:pw@broker:1883", "mqtt://***@broker:1883"),
            ("mqtts://u:pw@[::1]:8883", "mqtts://***@[::1]:8883"),
            ("https://host/ingest?x=a@b", "https://host/ingest?x=a@b"),
            ("https://host/", "https://host/"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
        }
        assert!(matches!(redact("https://host/"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_url_in_a_message_is_shown_without_credentials() {
        let text = "bad uri: https://admin:hunter2@collector.example/ingest is missing host; \
                    proxy `http://proxyuser:s3cret@proxy:3128` refused, see https://docs.example/@help";
        let shown = redact_in(text);
        assert!(
            !shown.contains("hunter2") && !shown.contains("admin"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("proxyuser"),
            "{shown}"
        );
        assert_eq!(
            shown,
            "bad uri: https://***@collector.example/ingest is missing host; \
             proxy `http://***@proxy:3128` refused, see https://docs.example/@help"
        );
        let plain = "connection to https://collector.example/ingest refused";
        assert!(matches!(redact_in(plain), Cow::Borrowed(_)));
        assert_eq!(redact_in("a://b@c :// @d ://"), "a://***@c :// @d ://");
        assert_eq!(redact_in("x@y://z"), "x@y://z");
    }
}
