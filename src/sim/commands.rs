//! Matching a typed line against the known commands, with unique abbreviations.
//!
//! Engineers and scripts type `sh ip int br`; real gear accepts any unique prefix of each
//! word and answers "ambiguous" or "invalid input" with a marker under the offending word.
//! The agent's drivers must cope with all three answers, so the simulator has to produce them
//! for the same inputs a real device would.

/// One word of a command pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    /// A keyword; typed as any unique prefix.
    Key(String),
    /// A number within an inclusive range (`terminal length <0-512>`).
    Number(u64, u64),
    /// Any single word (`hostname NAME`).
    Arg,
}

/// A command the session knows, as a pattern of words, with what it means.
#[derive(Debug, Clone)]
pub struct Pattern<K> {
    pub(crate) words: Vec<Word>,
    pub(crate) kind: K,
}

/// The outcome of matching one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<K> {
    /// A complete command: its kind and its words in full (keywords expanded, arguments as
    /// typed).
    Command { kind: K, words: Vec<String> },
    /// Word `word` (0-based) is a prefix of several keywords.
    Ambiguous { word: usize, keywords: Vec<String> },
    /// Word `word` matches nothing at that position.
    Invalid { word: usize },
    /// Every word matched but no command ends here.
    Incomplete,
}

/// Builds a pattern from text: `terminal length <0-512>`, `hostname <word>`.
pub fn pattern<K>(text: &str, kind: K) -> Pattern<K> {
    let words = text
        .split_whitespace()
        .map(|w| {
            if w == "<word>" {
                return Word::Arg;
            }
            if let Some(range) = w.strip_prefix('<').and_then(|r| r.strip_suffix('>'))
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) = (lo.parse(), hi.parse())
            {
                return Word::Number(lo, hi);
            }
            Word::Key(w.to_ascii_lowercase())
        })
        .collect();
    Pattern { words, kind }
}

/// Matches `words` (as typed) against `patterns`.
pub fn resolve<K: Clone>(patterns: &[Pattern<K>], words: &[&str]) -> Resolution<K> {
    let mut candidates: Vec<&Pattern<K>> = patterns.iter().collect();
    for (i, typed) in words.iter().enumerate() {
        let lower = typed.to_ascii_lowercase();
        let matching: Vec<&Pattern<K>> = candidates
            .iter()
            .copied()
            .filter(|p| p.words.get(i).is_some_and(|w| word_matches(w, &lower)))
            .collect();
        if matching.is_empty() {
            return Resolution::Invalid { word: i };
        }
        let mut keywords: Vec<&str> = matching
            .iter()
            .filter_map(|p| match &p.words[i] {
                Word::Key(k) => Some(k.as_str()),
                _ => None,
            })
            .collect();
        keywords.sort_unstable();
        keywords.dedup();
        candidates = if keywords.contains(&lower.as_str()) {
            // An exact keyword wins over longer keywords it is a prefix of, as on IOS
            // (`show interface` vs `show interfaces`).
            keep_key(&matching, i, &lower)
        } else if keywords.len() == 1 {
            keep_key(&matching, i, keywords[0])
        } else if keywords.len() > 1 {
            return Resolution::Ambiguous {
                word: i,
                keywords: keywords.iter().map(|k| k.to_string()).collect(),
            };
        } else {
            matching
        };
    }
    let Some(done) = candidates.iter().find(|p| p.words.len() == words.len()) else {
        return Resolution::Incomplete;
    };
    let full = done
        .words
        .iter()
        .zip(words)
        .map(|(w, typed)| match w {
            Word::Key(k) => k.clone(),
            _ => typed.to_string(),
        })
        .collect();
    Resolution::Command {
        kind: done.kind.clone(),
        words: full,
    }
}

/// What may follow `words` (all complete, as typed) when the next word starts with `prefix`:
/// the context help `?` shows. `<cr>` when a command may end here.
pub fn completions<K>(patterns: &[Pattern<K>], words: &[&str], prefix: &str) -> Vec<String> {
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let prefix = prefix.to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    for p in patterns {
        let fits = lower
            .iter()
            .enumerate()
            .all(|(i, w)| p.words.get(i).is_some_and(|pw| word_matches(pw, w)));
        if !fits {
            continue;
        }
        let item = match p.words.get(words.len()) {
            None if prefix.is_empty() => "<cr>".to_string(),
            None => continue,
            Some(Word::Key(k)) if k.starts_with(&prefix) => k.clone(),
            Some(Word::Number(lo, hi)) if prefix.is_empty() => format!("<{lo}-{hi}>"),
            Some(Word::Arg) if prefix.is_empty() => "WORD".to_string(),
            Some(_) => continue,
        };
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out.sort();
    out
}

fn keep_key<'a, K>(matching: &[&'a Pattern<K>], i: usize, key: &str) -> Vec<&'a Pattern<K>> {
    matching
        .iter()
        .copied()
        .filter(|p| matches!(&p.words[i], Word::Key(k) if k == key))
        .collect()
}

fn word_matches(word: &Word, typed_lower: &str) -> bool {
    match word {
        Word::Key(k) => k.starts_with(typed_lower),
        Word::Number(lo, hi) => typed_lower
            .parse::<u64>()
            .is_ok_and(|n| (*lo..=*hi).contains(&n)),
        Word::Arg => true,
    }
}

/// Byte offsets of the words of `line`, for placing a `^` marker under one.
pub fn word_offsets(line: &str) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut in_word = false;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            offsets.push(i);
        }
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Vec<Pattern<u32>> {
        vec![
            pattern("show version", 1),
            pattern("show ip interface brief", 2),
            pattern("show ip route", 3),
            pattern("show interfaces", 4),
            pattern("show interfaces status", 5),
            pattern("terminal length <0-512>", 6),
            pattern("terminal width <0-512>", 7),
            pattern("set cli screen-length <0-100000>", 8),
            pattern("hostname <word>", 9),
            pattern("exit", 10),
            pattern("enable", 11),
        ]
    }

    fn run(line: &str) -> Resolution<u32> {
        let words: Vec<&str> = line.split_whitespace().collect();
        resolve(&set(), &words)
    }

    fn command(kind: u32, words: &str) -> Resolution<u32> {
        Resolution::Command {
            kind,
            words: words.split(' ').map(String::from).collect(),
        }
    }

    #[test]
    fn unique_prefixes_expand() {
        assert_eq!(run("sh ver"), command(1, "show version"));
        assert_eq!(run("SH IP INT BR"), command(2, "show ip interface brief"));
        assert_eq!(run("sh ip ro"), command(3, "show ip route"));
        assert_eq!(run("term len 0"), command(6, "terminal length 0"));
        assert_eq!(run("t w 132"), command(7, "terminal width 132"));
        assert_eq!(run("ho Core-1"), command(9, "hostname Core-1"));
    }

    #[test]
    fn exact_keyword_beats_longer_one() {
        assert_eq!(run("sh int"), command(4, "show interfaces"));
        assert_eq!(run("sh int st"), command(5, "show interfaces status"));
    }

    #[test]
    fn ambiguous_and_invalid_name_the_word() {
        assert_eq!(
            run("s ver"),
            Resolution::Ambiguous {
                word: 0,
                keywords: vec!["set".into(), "show".into()]
            }
        );
        assert!(matches!(run("e"), Resolution::Ambiguous { word: 0, .. }));
        assert_eq!(run("sh foo"), Resolution::Invalid { word: 1 });
        assert_eq!(run("bogus"), Resolution::Invalid { word: 0 });
        assert_eq!(run("term len 999"), Resolution::Invalid { word: 2 });
        assert_eq!(run("term len x"), Resolution::Invalid { word: 2 });
        assert_eq!(run("sh ver extra"), Resolution::Invalid { word: 2 });
        assert_eq!(run("sh ip"), Resolution::Incomplete);
    }

    #[test]
    fn help_lists_what_may_follow() {
        let words = |line: &str| {
            line.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let help = |line: &str, prefix: &str| {
            let w = words(line);
            let w: Vec<&str> = w.iter().map(String::as_str).collect();
            completions(&set(), &w, prefix)
        };
        assert_eq!(help("sh", ""), ["interfaces", "ip", "version"]);
        assert_eq!(help("sh", "i"), ["interfaces", "ip"]);
        assert_eq!(help("sh int", ""), ["<cr>", "status"]);
        assert_eq!(help("term len", ""), ["<0-512>"]);
        assert_eq!(help("", "e"), ["enable", "exit"]);
        assert!(help("bogus", "").is_empty());
    }

    #[test]
    fn offsets_point_at_words() {
        assert_eq!(word_offsets("  sh  ip x"), vec![2, 6, 9]);
    }
}
